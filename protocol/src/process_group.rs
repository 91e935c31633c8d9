//! Process groups: the agent and the local platform both kill a group only
//! while a process is in it, since a group with none left may have had its
//! id given to another program's group since.

/// Whether any process is in process group `group`. While one is, the id
/// cannot be given to another group. A zombie counts: it holds the id as
/// well, and a signal to it does nothing. Where the answer is not "none"
/// (EPERM: the group is someone else's), assumed so, as the signal that
/// follows then fails by itself.
///
/// One `kill(-group, 0)`: reading every process's `/proc/<pid>/stat`
/// instead cost a controller stopping 1,000 agents a sixth of its CPU
/// (each stop scanned the 2,000 processes of the others).
pub fn group_has_members(group: i32) -> bool {
    if group <= 1 {
        // 0 is the caller's own group and 1 would be init's: never ours.
        return false;
    }
    !matches!(
        nix::sys::signal::killpg(nix::unistd::Pid::from_raw(group), None),
        Err(nix::errno::Errno::ESRCH)
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::process::CommandExt;

    #[test]
    fn a_group_counts_as_alive_only_while_a_process_is_in_it() {
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .process_group(0)
            .spawn()
            .unwrap();
        let group = i32::try_from(child.id()).unwrap();
        assert!(group_has_members(group));
        child.kill().unwrap();
        child.wait().unwrap();
        assert!(!group_has_members(group));
        assert!(!group_has_members(0) && !group_has_members(1));
    }

    /// Read syscalls this thread has made (a count, not a time); `None`
    /// where the kernel keeps no such count (no task I/O accounting).
    fn reads_so_far() -> Option<u64> {
        std::fs::read_to_string("/proc/thread-self/io")
            .ok()?
            .lines()
            .find_map(|l| l.strip_prefix("syscr: "))
            .and_then(|n| n.trim().parse().ok())
    }

    /// A controller stops each of its agents with this check: reading
    /// every process's stat for it made stopping 1,000 agents quadratic
    /// (a sixth of the controller's CPU in the 1,000-build benchmark).
    #[test]
    fn the_check_reads_no_files() {
        let Some(before) = reads_so_far() else {
            eprintln!(
                "skipped: this kernel counts no read syscalls per thread (/proc/thread-self/io)"
            );
            return;
        };
        for group in 2..1002 {
            let _ = group_has_members(group);
        }
        // Reading the counter itself takes a few reads (to the file's end).
        let reads = reads_so_far().unwrap() - before;
        assert!(reads <= 10, "{reads} reads for 1,000 checks");
    }
}
