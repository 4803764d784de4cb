//! The `aligner` command line. Errors print as one line and exit non-zero.

mod app;

use std::process::ExitCode;

fn main() -> ExitCode {
    // A bug must still end in one readable line, not a backtrace.
    std::panic::set_hook(Box::new(|info| {
        let msg = app::panic_message(info.payload());
        eprintln!("error: internal error ({msg}); please report this with the command you ran");
    }));
    match app::run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let text = format!("{e:#}").replace('\n', " ");
            eprintln!("error: {text}");
            ExitCode::from(app::exit_code(&e))
        }
    }
}
