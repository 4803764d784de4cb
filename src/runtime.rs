//! Finding and loading the ONNX Runtime shared library.
//!
//! The binary links nothing at build time (`load-dynamic`), so one build runs on whichever
//! library the user has. Search order: an explicit path (`--ort-lib` / `ORT_DYLIB_PATH`), the
//! executable's folder, the active Python environment's `onnxruntime` package, then the system
//! library path. Each candidate is opened and its version checked before ort is initialised,
//! so a failure can list everything that was tried.

use std::ffi::CStr;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// The oldest ONNX Runtime this build's API level (`api-31`) can drive.
pub const MIN_ORT_MINOR: u32 = 31;
const LIB_NAME: &str = "libonnxruntime.so";
const FIX: &str = "install it with `pip install onnxruntime==1.31.1` in the active virtualenv, or pass --ort-lib PATH / set ORT_DYLIB_PATH";

/// A loaded ONNX Runtime and the environment every session is created in. Crate-private:
/// embedders see [`RuntimeInfo`](crate::RuntimeInfo), which holds no `ort` type.
pub(crate) struct OrtRuntime {
    pub(crate) path: PathBuf,
    pub(crate) version: String,
    pub(crate) env: ort::environment::Environment,
}

/// Where to look, in order. `explicit` is `--ort-lib`; the environment is read here.
pub(crate) fn candidate_paths(explicit: Option<&Path>) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Some(p) = explicit {
        out.push(p.to_path_buf());
        return out;
    }
    if let Some(p) = std::env::var_os("ORT_DYLIB_PATH").filter(|p| !p.is_empty()) {
        out.push(PathBuf::from(p));
        return out;
    }
    // Next to this code (libaligner.so embedded in an app, or the binary) and in `../lib` from
    // it: where a release bundle keeps the library, wherever the bundle is unpacked.
    let mut dirs: Vec<PathBuf> = Vec::new();
    if let Some(dir) = own_object_dir() {
        dirs.push(dir);
    }
    if let Some(dir) = std::env::current_exe()
        .ok()
        .and_then(|e| e.parent().map(Path::to_path_buf))
    {
        dirs.push(dir);
    }
    for dir in dirs {
        for d in [dir.clone(), dir.join("../lib")] {
            for lib in libs_in(&d) {
                if !out.contains(&lib) {
                    out.push(lib);
                }
            }
        }
    }
    for var in ["VIRTUAL_ENV", "CONDA_PREFIX"] {
        if let Some(prefix) = std::env::var_os(var).filter(|p| !p.is_empty()) {
            out.extend(python_package_libs(Path::new(&prefix)));
        }
    }
    out.push(PathBuf::from(LIB_NAME));
    out
}

/// The folder of the shared object holding this code: `libaligner.so` when an app loaded it,
/// the executable when the code is linked in.
fn own_object_dir() -> Option<PathBuf> {
    let mut info: libc::Dl_info = unsafe { std::mem::zeroed() };
    // SAFETY: dladdr only reads the address and fills `info`; any function of ours will do.
    let found = unsafe { libc::dladdr(own_object_dir as *const libc::c_void, &mut info) };
    if found == 0 || info.dli_fname.is_null() {
        return None;
    }
    // SAFETY: dladdr sets dli_fname to a NUL-terminated path owned by the loader.
    let name = unsafe { std::ffi::CStr::from_ptr(info.dli_fname) };
    let path = PathBuf::from(
        <std::ffi::OsStr as std::os::unix::ffi::OsStrExt>::from_bytes(name.to_bytes()),
    );
    std::fs::canonicalize(path)
        .ok()?
        .parent()
        .map(Path::to_path_buf)
}

fn libs_in(dir: &Path) -> Vec<PathBuf> {
    let mut libs: Vec<PathBuf> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(LIB_NAME))
        })
        .collect();
    libs.sort();
    libs.reverse(); // prefer the most specific versioned name
    libs
}

fn python_package_libs(prefix: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for lib in ["lib", "lib64"] {
        let Ok(entries) = std::fs::read_dir(prefix.join(lib)) else {
            continue;
        };
        for e in entries.flatten() {
            let name = e.file_name();
            if name.to_string_lossy().starts_with("python") {
                let capi = e.path().join("site-packages/onnxruntime/capi");
                out.extend(libs_in(&capi));
            }
        }
    }
    out
}

/// Reads the version string of a candidate without initialising ort.
fn probe_version(path: &Path) -> std::result::Result<String, String> {
    // SAFETY: loading ONNX Runtime runs only its static initialisers; we call one exported
    // function with the documented signature.
    unsafe {
        let lib = libloading::Library::new(path).map_err(|e| {
            // libloading's own text is generic ("dlopen failed"); the cause is in its source.
            match std::error::Error::source(&e) {
                Some(cause) => cause.to_string(),
                None => e.to_string(),
            }
        })?;
        let get_base: libloading::Symbol<unsafe extern "C" fn() -> *const ort::sys::OrtApiBase> =
            lib.get(b"OrtGetApiBase")
                .map_err(|_| "not an ONNX Runtime library (no OrtGetApiBase)".to_string())?;
        let base = get_base();
        if base.is_null() {
            return Err("OrtGetApiBase returned null".into());
        }
        let version = CStr::from_ptr(((*base).GetVersionString)())
            .to_string_lossy()
            .into_owned();
        std::mem::forget(lib); // keep it loaded: ort will open the same file again
        Ok(version)
    }
}

fn minor_version(version: &str) -> Option<(u32, u32)> {
    let mut parts = version.split('.');
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next()?.parse().ok()?;
    Some((major, minor))
}

/// Rejects libraries older than this build's API level, naming the fix.
fn check_version(version: &str, path: &Path) -> Result<()> {
    match minor_version(version) {
        Some((major, minor)) if major > 1 || (major == 1 && minor >= MIN_ORT_MINOR) => Ok(()),
        _ => Err(Error::RuntimeNotFound(format!(
            "ONNX Runtime {version} at {} is too old; aligner needs 1.{MIN_ORT_MINOR} or newer: {FIX}",
            path.display()
        ))),
    }
}

/// The process's one ONNX Runtime environment (ONNX Runtime allows one per process); every
/// model loaded later shares it.
static LOADED: std::sync::Mutex<Option<std::sync::Arc<OrtRuntime>>> = std::sync::Mutex::new(None);

/// Loads ONNX Runtime once per process (the first usable candidate) and returns the shared
/// environment; a later call naming a different library is an error, not a silent swap.
pub(crate) fn load(explicit: Option<&Path>) -> Result<std::sync::Arc<OrtRuntime>> {
    let mut loaded = LOADED
        .lock()
        .map_err(|_| Error::RuntimeNotFound("ONNX Runtime loader state is poisoned".into()))?;
    if let Some(rt) = loaded.as_ref() {
        let same = explicit.is_none_or(|p| p == rt.path);
        if !same {
            return Err(Error::RuntimeNotFound(format!(
                "ONNX Runtime {} is already loaded in this process; cannot also load {}",
                rt.path.display(),
                explicit
                    .map(|p| p.display().to_string())
                    .unwrap_or_default()
            )));
        }
        return Ok(std::sync::Arc::clone(rt));
    }
    let rt = std::sync::Arc::new(load_new(explicit)?);
    *loaded = Some(std::sync::Arc::clone(&rt));
    Ok(rt)
}

fn load_new(explicit: Option<&Path>) -> Result<OrtRuntime> {
    let mut tried = Vec::new();
    for path in candidate_paths(explicit) {
        match probe_version(&path) {
            Ok(version) => {
                check_version(&version, &path)?;
                let env = ort::init_from(&path)
                    .map_err(|e| Error::RuntimeNotFound(format!("{}: {e}; {FIX}", path.display())))?
                    .with_name("aligner")
                    // Its runtime events; a full opt-out needs ORT_DISABLE_TELEMETRY=1 before
                    // the library loads, which the binary sets (README, Embedding).
                    .with_telemetry(false)
                    .with_logger(std::sync::Arc::new(drop_log_line))
                    .build()
                    .map_err(|e| Error::RuntimeNotFound(format!("{}: {e}", path.display())))?;
                return Ok(OrtRuntime { path, version, env });
            }
            Err(reason) => tried.push(format!("{} ({reason})", path.display())),
        }
    }
    Err(Error::RuntimeNotFound(format!(
        "ONNX Runtime library not found; tried: {}; {FIX}",
        tried.join("; ")
    )))
}

/// The environment's logger. ONNX Runtime's own log lines would break the one-line error
/// contract (its errors reach the user through ours), so they are all dropped. Each session
/// gets its own logger instead (see [`PlacementLog`]).
fn drop_log_line(_: ort::logging::LogLevel, _: &str, _: &str, _: &str, _: &str) {}

/// One session build's node placement lines ("... placed on [X]. Number of nodes: N"). The
/// session's own logger fills it, so two models built at once on different threads never see
/// each other's lines; everything else the session logs is dropped, as the environment's is.
#[derive(Clone, Default)]
pub(crate) struct PlacementLog(std::sync::Arc<std::sync::Mutex<Vec<String>>>);

impl PlacementLog {
    pub(crate) fn logger(&self) -> ort::logging::LoggerFunction {
        let lines = std::sync::Arc::clone(&self.0);
        std::sync::Arc::new(move |_, _: &str, _: &str, _: &str, message: &str| {
            if message.contains("placed on [") {
                if let Ok(mut log) = lines.lock() {
                    log.push(message.to_string());
                }
            }
        })
    }

    pub(crate) fn take(&self) -> Vec<String> {
        self.0
            .lock()
            .map(|mut log| std::mem::take(&mut *log))
            .unwrap_or_default()
    }
}

/// Execution providers compiled into the loaded library.
pub fn available_providers() -> Vec<String> {
    let api = ort::api();
    let mut names: *mut *mut std::ffi::c_char = std::ptr::null_mut();
    let mut count: std::ffi::c_int = 0;
    // SAFETY: documented C API; the array is released with the matching call below.
    unsafe {
        let status = (api.GetAvailableProviders)(&mut names, &mut count);
        if !status.0.is_null() {
            (api.ReleaseStatus)(status.0);
            return Vec::new();
        }
        let out = (0..count as isize)
            .map(|i| {
                CStr::from_ptr(*names.offset(i))
                    .to_string_lossy()
                    .into_owned()
            })
            .collect();
        let status = (api.ReleaseAvailableProviders)(names, count);
        if !status.0.is_null() {
            (api.ReleaseStatus)(status.0);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn explicit_path_is_the_only_candidate() {
        let c = candidate_paths(Some(Path::new("/x/libonnxruntime.so")));
        assert_eq!(c, vec![PathBuf::from("/x/libonnxruntime.so")]);
    }

    #[test]
    fn versions_parse() {
        assert_eq!(minor_version("1.31.1"), Some((1, 31)));
        assert_eq!(minor_version("garbage"), None);
    }

    #[test]
    fn old_versions_get_their_own_error() {
        let p = Path::new("/x/libonnxruntime.so");
        assert!(check_version("1.31.1", p).is_ok());
        assert!(check_version("1.32.0", p).is_ok());
        let msg = check_version("1.20.1", p).unwrap_err().to_string();
        assert!(
            msg.contains("1.20.1") && msg.contains("too old") && msg.contains("1.31"),
            "{msg}"
        );
        assert!(check_version("weird", p).is_err());
    }

    #[test]
    fn missing_file_is_reported_with_fix() {
        let e = load(Some(Path::new("/nonexistent/libonnxruntime.so")))
            .err()
            .unwrap();
        let msg = e.to_string();
        assert!(msg.contains("/nonexistent/libonnxruntime.so"), "{msg}");
        assert!(msg.contains("pip install onnxruntime==1.31.1"), "{msg}");
    }
}
