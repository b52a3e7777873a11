//! The executable's own read-only pages, handed back to the kernel once start-up has
//! run: [`release`].
//!
//! Why: most of a nuop process's resident memory is the binary's code, not its data.
//! Building Nushell's engine runs the set-up code of each of its several hundred
//! commands once, and the kernel maps up to 64 KiB of the file around every page it
//! faults in (fault-around), so start-up leaves ~10 MiB of code resident that does not run
//! again; the first list and the scripts' loading add more. `MADV_PAGEOUT` on the
//! binary's read-only mappings drops those pages; what the process still runs is
//! faulted back in as it runs, from the page cache or the file. The kernel leaves alone
//! the pages another process maps too, so nothing is taken from a neighbour. Measured
//! in BENCHMARKS.md ("Issue 17: the binary's start-up pages").
//!
//! Pure: [`own_read_only`] (which mappings). Does I/O: [`release`] reads
//! `/proc/self/exe` and `/proc/self/maps` and calls `madvise`.

use std::ops::Range;

/// The address ranges of `maps` (the text of `/proc/<pid>/maps`) that map the file
/// `exe` read-only: its code, constants and unwind tables, not its writable data
/// (test `own_read_only_picks_the_binarys_read_only_mappings`).
pub fn own_read_only(maps: &str, exe: &str) -> Vec<Range<usize>> {
    maps.lines()
        .filter_map(|line| {
            // start-end perms offset dev inode [path, which may contain spaces]
            let mut fields = line.splitn(6, ' ');
            let range = fields.next()?;
            let perms = fields.next()?;
            let path = fields.nth(3)?.trim_start();
            if perms.as_bytes().get(1) != Some(&b'-') || path != exe {
                return None;
            }
            let (start, end) = range.split_once('-')?;
            let start = usize::from_str_radix(start, 16).ok()?;
            let end = usize::from_str_radix(end, 16).ok()?;
            (start < end).then_some(start..end)
        })
        .collect()
}

/// Asks the kernel to page out the executable's read-only mappings; returns how many
/// bytes it accepted the advice for (0 where `MADV_PAGEOUT` is unknown, before Linux
/// 5.4, or `/proc` is unreadable: the process then keeps its pages, nothing else
/// changes). Call it off the async workers: the kernel walks the mappings' page tables.
pub fn release() -> usize {
    let (Ok(exe), Ok(maps)) = (
        std::fs::read_link("/proc/self/exe"),
        std::fs::read_to_string("/proc/self/maps"),
    ) else {
        return 0;
    };
    let exe = exe.to_string_lossy();
    let advised: usize = own_read_only(&maps, &exe)
        .into_iter()
        .filter(|range| page_out(range.clone()))
        .map(|range| range.len())
        .sum();
    tracing::debug!(bytes = advised, "paged out the binary's start-up pages");
    advised
}

/// `madvise(MADV_PAGEOUT)` on one range of this process's own read-only file mapping.
#[allow(unsafe_code)]
fn page_out(range: Range<usize>) -> bool {
    let Some(start) = std::ptr::NonNull::new(range.start as *mut std::ffi::c_void) else {
        return false;
    };
    // SAFETY: the range is a whole read-only, file-backed mapping of this process, read
    // from /proc/self/maps. MADV_PAGEOUT only reclaims its pages; their contents are the
    // file's and are read back on the next access, so no memory the program relies on
    // changes. A range unmapped meanwhile makes madvise fail with ENOMEM, nothing worse.
    unsafe { nix::sys::mman::madvise(start, range.len(), nix::sys::mman::MmapAdvise::MADV_PAGEOUT) }
        .is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAPS: &str = "\
55f7cef12000-55f7d01fd000 r--p 00000000 fe:01 1234 /usr/bin/nuop managed
55f7d01fd000-55f7d4a81000 r-xp 012ea000 fe:01 1234 /usr/bin/nuop managed
55f7d4a81000-55f7d4d9c000 r--p 05b6d000 fe:01 1234 /usr/bin/nuop managed
55f7d4d9c000-55f7d4da0000 rw-p 05e88000 fe:01 1234 /usr/bin/nuop managed
55f7ed661000-55f7ed6a2000 rw-p 00000000 00:00 0                          [heap]
7f80f48cc000-7f80f4a22000 r-xp 00028000 fe:01 99 /usr/lib/x86_64-linux-gnu/libc.so.6
7f80f4bbb000-7f80f4be1000 r-xp 00000000 00:00 0
garbage
";

    #[test]
    fn own_read_only_picks_the_binarys_read_only_mappings() {
        assert_eq!(
            own_read_only(MAPS, "/usr/bin/nuop managed"),
            vec![
                0x55f7cef12000..0x55f7d01fd000,
                0x55f7d01fd000..0x55f7d4a81000,
                0x55f7d4a81000..0x55f7d4d9c000,
            ]
        );
        assert!(own_read_only(MAPS, "/usr/bin/other").is_empty());
        assert!(own_read_only("", "/usr/bin/nuop managed").is_empty());
    }

    /// The test binary's own code: resident after it ran, fewer resident pages after
    /// `release` (what this test itself runs next is faulted back in, a few pages).
    #[test]
    fn released_pages_leave_the_resident_set() {
        fn rss_file_kib() -> u64 {
            let status = std::fs::read_to_string("/proc/self/status").expect("status");
            status
                .lines()
                .find_map(|l| l.strip_prefix("RssFile:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
                .expect("RssFile in /proc/self/status")
        }
        let before = rss_file_kib();
        let advised = release();
        let after = rss_file_kib();
        assert!(
            advised > 0,
            "madvise(MADV_PAGEOUT) refused for every mapping"
        );
        assert!(
            after < before,
            "RssFile {before} KiB before release, {after} KiB after"
        );
    }
}
