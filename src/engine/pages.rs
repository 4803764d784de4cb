//! Handing back the pages of model files that a start read but runs do not read again.
//!
//! ONNX Runtime maps each external initializer of a model file privately, and a start reads
//! some of them whole: every int8 scale and zero point, the tied embedding that Gather reads,
//! the weights it prepacks. Runs then read far less (the prepacked copies and a few embedding
//! rows), but the pages the start touched stay in the process's resident set: 46 MB on the
//! default model, a sixth of its RSS.
//!
//! `MADV_DONTNEED` takes a page out of this process's page tables and leaves the page cache
//! as it is, so a later read maps the same bytes again from the file. That holds only for a
//! page nobody wrote to, so a mapping is released only when it holds no private copy (no
//! anonymous or swapped page). And the address range must still be that file's mapping
//! when `madvise` runs: only session builds and drops map or unmap model files, so both take
//! [`lock_maps`], and the release runs under it. A host that maps files under the model
//! folder or the graph cache itself must not unmap them while a start runs.
//!
//! Tables that runs read by row (the token embedding: see `row_reads`) need one step more.
//! Linux 6.18 maps a file's whole folio on a fault, and the page cache holds a file that was
//! read in order in folios of up to 2 MB, so a correction's hundred-odd distinct tokens
//! mapped the default model's whole 31 MB embedding again. So their pages also leave the page
//! cache (`POSIX_FADV_DONTNEED`, which skips pages another mapping still uses), and their
//! range is advised `MADV_RANDOM`: a fault then reads one page, into a folio of one page.

use std::cell::Cell;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard, PoisonError};

use super::row_reads::{row_tables, RowTable};

static MAPS: Mutex<()> = Mutex::new(());

thread_local! {
    /// Whether this thread holds `MAPS` (a start drops its probe sessions while holding it).
    static HELD: Cell<bool> = const { Cell::new(false) };
}

/// Held while this process may map or unmap model files: a start, or a session's drop.
pub(super) struct MapsLock {
    guard: Option<MutexGuard<'static, ()>>,
}

/// Takes the process's model-mapping lock, or nothing if this thread already holds it.
pub(super) fn lock_maps() -> MapsLock {
    if HELD.with(Cell::get) {
        return MapsLock { guard: None };
    }
    let guard = MAPS.lock().unwrap_or_else(PoisonError::into_inner);
    HELD.with(|h| h.set(true));
    MapsLock { guard: Some(guard) }
}

impl Drop for MapsLock {
    fn drop(&mut self) {
        if self.guard.is_some() {
            HELD.with(|h| h.set(false));
        }
    }
}

/// One mapping as `/proc/self/smaps` lists it, with what decides whether it may be released.
#[derive(Debug, Default, PartialEq)]
struct Mapping {
    start: usize,
    end: usize,
    /// Where in the file the mapping begins.
    offset: u64,
    path: PathBuf,
    rss_kb: u64,
    /// Anonymous and swapped pages: copies that exist only in this process.
    private_kb: u64,
}

fn parse_smaps(text: &str) -> Vec<Mapping> {
    let mut maps: Vec<Mapping> = Vec::new();
    for line in text.lines() {
        let mut fields = line.split_whitespace();
        let Some(first) = fields.next() else { continue };
        if let Some(name) = first.strip_suffix(':') {
            let kb: u64 = fields.next().and_then(|v| v.parse().ok()).unwrap_or(0);
            if let Some(m) = maps.last_mut() {
                match name {
                    "Rss" => m.rss_kb = kb,
                    // Dirty page-cache pages (a file just written) are not copies: the
                    // page cache keeps them. A written page of a private mapping is.
                    "Anonymous" | "Swap" => m.private_kb += kb,
                    _ => {}
                }
            }
            continue;
        }
        let Some((start, end)) = first.split_once('-') else {
            continue;
        };
        let (Ok(start), Ok(end)) = (
            usize::from_str_radix(start, 16),
            usize::from_str_radix(end, 16),
        ) else {
            continue;
        };
        // perms, offset, device and inode, then the path (which may hold spaces).
        let offset = fields
            .nth(1)
            .and_then(|o| u64::from_str_radix(o, 16).ok())
            .unwrap_or(0);
        let mut rest = line
            .splitn(6, char::is_whitespace)
            .filter(|s| !s.is_empty());
        let path = rest.nth(5).unwrap_or("").trim();
        maps.push(Mapping {
            start,
            end,
            offset,
            path: PathBuf::from(path),
            ..Mapping::default()
        });
    }
    maps
}

/// Mappings of files under `dirs` that hold no private copy.
fn clean_under<'a>(maps: &'a [Mapping], dirs: &'a [PathBuf]) -> impl Iterator<Item = &'a Mapping> {
    maps.iter()
        .filter(move |m| m.private_kb == 0 && dirs.iter().any(|d| m.path.starts_with(d)))
}

fn releasable<'a>(maps: &'a [Mapping], dirs: &'a [PathBuf]) -> impl Iterator<Item = &'a Mapping> {
    clean_under(maps, dirs).filter(|m| m.rss_kb > 0)
}

/// Drops this process's clean pages of the files under `dirs` (the model folder, the graph
/// cache); returns how many bytes were resident in them. Call with [`lock_maps`] held.
pub(super) fn release_model_pages(dirs: &[&Path], _held: &MapsLock) -> u64 {
    // smaps lists resolved paths.
    let dirs: Vec<PathBuf> = dirs.iter().filter_map(|d| d.canonicalize().ok()).collect();
    let Ok(text) = std::fs::read_to_string("/proc/self/smaps") else {
        return 0; // not Linux, or no procfs: nothing is released
    };
    let maps = parse_smaps(&text);
    let mut released = 0;
    for m in releasable(&maps, &dirs) {
        if advise_dontneed(m.start, m.end - m.start) {
            released += m.rss_kb * 1024;
        }
    }
    // The graphs beside the mapped files say which of their bytes are read by row (a table
    // the start did not read, as an untied embedding may be, is still mapped).
    let graph_dirs: BTreeSet<&Path> = clean_under(&maps, &dirs)
        .filter_map(|m| m.path.parent())
        .collect();
    let tables: Vec<RowTable> = graph_dirs
        .iter()
        .filter_map(|d| std::fs::read_dir(d).ok())
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "onnx"))
        .flat_map(|p| row_tables(&p))
        .collect();
    for (m, span) in row_spans(&maps, &dirs, &tables) {
        read_by_page(m, span);
    }
    released
}

/// The parts of clean mappings that hold a row table, as (mapping, file byte range).
fn row_spans<'a>(
    maps: &'a [Mapping],
    dirs: &'a [PathBuf],
    tables: &'a [RowTable],
) -> impl Iterator<Item = (&'a Mapping, (u64, u64))> {
    clean_under(maps, dirs).flat_map(move |m| {
        let mapped = (m.offset, m.offset + (m.end - m.start) as u64);
        tables.iter().filter_map(move |t| {
            let (lo, hi) = (t.offset.max(mapped.0), (t.offset + t.len).min(mapped.1));
            (t.file == m.path && lo < hi).then_some((m, (lo, hi)))
        })
    })
}

/// Makes later reads of `span` (file bytes inside `m`) map one page each; best effort.
#[cfg(target_os = "linux")]
fn read_by_page(m: &Mapping, (lo, hi): (u64, u64)) {
    use std::os::fd::AsRawFd;
    // SAFETY: sysconf only reads a system constant.
    let page = u64::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).unwrap_or(4096);
    let (lo, hi) = (lo / page * page, hi.div_ceil(page) * page);
    let start = m.start + (lo.max(m.offset) - m.offset) as usize;
    let end = (m.start + (hi - m.offset) as usize).min(m.end);
    // SAFETY: an advice on part of a file mapping that nothing unmaps meanwhile (the caller
    // holds `lock_maps`); MADV_RANDOM changes only how faults read ahead.
    unsafe { libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_RANDOM) };
    if let Ok(file) = std::fs::File::open(&m.path) {
        // SAFETY: an advice on an open descriptor; it drops only clean, unmapped page-cache
        // pages, which a later read brings back from the file.
        let (off, len) = (lo as libc::off_t, (hi - lo) as libc::off_t);
        unsafe { libc::posix_fadvise(file.as_raw_fd(), off, len, libc::POSIX_FADV_DONTNEED) };
    }
}

#[cfg(not(target_os = "linux"))]
fn read_by_page(_m: &Mapping, _span: (u64, u64)) {}

#[cfg(target_os = "linux")]
fn advise_dontneed(start: usize, len: usize) -> bool {
    // SAFETY: the range is a whole file mapping that holds no private copy and that nothing
    // unmaps meanwhile (the caller holds `lock_maps`); DONTNEED then only drops page-table
    // entries, and a later read maps the same file bytes again.
    unsafe { libc::madvise(start as *mut libc::c_void, len, libc::MADV_DONTNEED) == 0 }
}

#[cfg(not(target_os = "linux"))]
fn advise_dontneed(_start: usize, _len: usize) -> bool {
    false
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;
    use std::io::Write;

    const SMAPS: &str = "\
7f0000000000-7f0000004000 rw-p 00100000 fe:00 42    /cache/e1/model.onnx.data
Rss:                  16 kB
Private_Dirty:        16 kB
Anonymous:             0 kB
Swap:                  0 kB
7f0000004000-7f0000008000 rw-p 00200000 fe:00 42    /cache/e1/model.onnx.data
Rss:                  16 kB
Private_Dirty:         4 kB
Anonymous:             4 kB
Swap:                  4 kB
7f0000008000-7f0000009000 rw-p 00000000 00:00 0 
Rss:                   4 kB
7f000000a000-7f000000b000 r--p 00000000 fe:00 7    /models/my model/model.onnx.data (deleted)
Rss:                   4 kB
";

    #[test]
    fn reads_ranges_paths_and_private_copies() {
        let maps = parse_smaps(SMAPS);
        assert_eq!(maps.len(), 4);
        assert_eq!(
            (maps[0].start, maps[0].end),
            (0x7f00_0000_0000, 0x7f00_0000_4000)
        );
        assert_eq!(maps[0].path, Path::new("/cache/e1/model.onnx.data"));
        assert_eq!((maps[0].offset, maps[1].offset), (0x100000, 0x200000));
        assert_eq!((maps[0].rss_kb, maps[0].private_kb), (16, 0));
        assert_eq!(maps[1].private_kb, 8);
        assert_eq!(maps[2].path, Path::new(""));
        assert_eq!(
            maps[3].path,
            Path::new("/models/my model/model.onnx.data (deleted)")
        );
    }

    #[test]
    fn only_clean_mappings_under_the_model_dirs_are_released() {
        let maps = parse_smaps(SMAPS);
        let dirs = [PathBuf::from("/cache"), PathBuf::from("/models/my model")];
        let starts: Vec<usize> = releasable(&maps, &dirs).map(|m| m.start).collect();
        // Dirty page-cache pages too; not the one with private copies, not the anonymous one.
        assert_eq!(starts, [0x7f00_0000_0000, 0x7f00_0000_a000]);
        assert_eq!(releasable(&maps, &[PathBuf::from("/cach")]).count(), 0);
    }

    const PAGE: usize = 4096;
    const PAGES: usize = 16;

    /// A private read-write mapping of `file`, as ONNX Runtime makes them.
    fn map(file: &std::fs::File) -> *mut u8 {
        use std::os::fd::AsRawFd;
        // SAFETY: a fresh mapping of a file this test owns, unmapped by `unmap`.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                PAGE * PAGES,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE,
                file.as_raw_fd(),
                0,
            )
        };
        assert_ne!(p, libc::MAP_FAILED);
        p.cast()
    }

    fn unmap(p: *mut u8) {
        // SAFETY: `p` came from `map`, with the same length.
        unsafe { libc::munmap(p.cast(), PAGE * PAGES) };
    }

    fn resident_kb(start: *mut u8) -> u64 {
        let text = std::fs::read_to_string("/proc/self/smaps").unwrap();
        let maps = parse_smaps(&text);
        maps.iter()
            .find(|m| m.start == start as usize)
            .unwrap()
            .rss_kb
    }

    #[test]
    fn released_pages_read_back_the_same_and_written_ones_are_kept() {
        let dir = tempfile::tempdir().unwrap();
        let bytes: Vec<u8> = (0..PAGE * PAGES).map(|i| (i * 7 % 251) as u8).collect();
        let path = dir.path().join("model.onnx.data");
        std::fs::File::create(&path)
            .unwrap()
            .write_all(&bytes)
            .unwrap();
        let file = std::fs::File::open(&path).unwrap();
        let (clean, written) = (map(&file), map(&file));
        // SAFETY: both mappings are PAGE * PAGES bytes long and live until `unmap`.
        let (clean_s, written_s) = unsafe {
            (
                std::slice::from_raw_parts_mut(clean, PAGE * PAGES),
                std::slice::from_raw_parts_mut(written, PAGE * PAGES),
            )
        };
        assert_eq!(clean_s, &bytes[..]); // reads every page in
        assert_eq!(written_s, &bytes[..]);
        written_s[5] ^= 0xff; // a private copy of page 0
        assert_eq!(resident_kb(clean), (PAGE * PAGES / 1024) as u64);

        let lock = lock_maps();
        let released = release_model_pages(&[dir.path()], &lock);
        drop(lock);

        assert_eq!(released, (PAGE * PAGES) as u64);
        assert_eq!(resident_kb(clean), 0);
        assert_eq!(clean_s, &bytes[..]);
        assert_eq!(resident_kb(written), (PAGE * PAGES / 1024) as u64);
        assert_eq!(written_s[5], bytes[5] ^ 0xff);
        unmap(clean);
        unmap(written);
    }

    #[test]
    fn row_tables_are_found_in_clean_mappings_of_their_own_file_only() {
        let maps = parse_smaps(SMAPS);
        let dirs = [PathBuf::from("/cache"), PathBuf::from("/models/my model")];
        let data = PathBuf::from("/cache/e1/model.onnx.data");
        let table = |offset: u64, len: u64| RowTable {
            name: "emb".into(),
            file: data.clone(),
            offset,
            len,
        };
        // The first mapping holds file bytes 0x100000..0x104000; the second (the same file)
        // holds a private copy, so it is never advised.
        let tables = [
            table(0x100800, 0x1000),   // inside
            table(0x0ff000, 0x2000),   // straddles the start
            table(0x103000, 0x200000), // runs past the end, into the second mapping's bytes
            table(0x200000, 0x1000),   // only in the second mapping
        ];
        let spans: Vec<(usize, (u64, u64))> = row_spans(&maps, &dirs, &tables)
            .map(|(m, span)| (m.start, span))
            .collect();
        let first = 0x7f00_0000_0000;
        assert_eq!(
            spans,
            [
                (first, (0x100800, 0x101800)),
                (first, (0x100000, 0x101000)),
                (first, (0x103000, 0x104000)),
            ]
        );
        let elsewhere = RowTable {
            file: PathBuf::from("/cache/e2/model.onnx.data"),
            ..table(0x100000, 0x1000)
        };
        assert_eq!(row_spans(&maps, &dirs, &[elsewhere]).count(), 0);
        // A table the start never read is still advised; it has nothing to release.
        let mut untouched = parse_smaps(SMAPS);
        untouched[0].rss_kb = 0;
        assert_eq!(releasable(&untouched, &dirs).count(), 1);
        assert_eq!(row_spans(&untouched, &dirs, &tables).count(), 3);
    }

    #[test]
    fn the_lock_is_reentrant_on_its_thread() {
        let outer = lock_maps();
        let inner = lock_maps(); // a start dropping its probe session
        assert!(outer.guard.is_some() && inner.guard.is_none());
        drop(inner);
        assert!(HELD.with(Cell::get));
        drop(outer);
        assert!(!HELD.with(Cell::get));
    }
}
