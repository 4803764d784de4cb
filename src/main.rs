//! The `aligner` command line. Errors print as one line and exit non-zero.

mod app;

use std::process::ExitCode;

fn main() -> ExitCode {
    // ONNX Runtime 1.31's Linux build records telemetry (the executable's path, OS, CPU, a
    // device id) in ~/.cache/Microsoft/DeveloperTools/.onnxruntime and uploads it. Only this
    // variable, read as the library initializes, turns all of it off; it is set here because
    // no other thread runs yet. A value the user set is left as it is.
    if std::env::var_os("ORT_DISABLE_TELEMETRY").is_none() {
        std::env::set_var("ORT_DISABLE_TELEMETRY", "1");
    }
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
