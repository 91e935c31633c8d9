//! Process groups, read from /proc: the agent and the local platform both
//! kill a group only while a process is in it, since a group with none left
//! may have had its id given to another program's group since.

/// Whether any live process is in process group `group`. While one is,
/// the id cannot be given to another group. Where /proc cannot be read,
/// assumed so (signal, as without the check).
pub fn group_has_members(group: i32) -> bool {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return true;
    };
    entries.flatten().any(|entry| {
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .filter(|n| n.bytes().all(|b| b.is_ascii_digit()))
        else {
            return false;
        };
        std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .ok()
            .and_then(|stat| {
                // After the parenthesised name: state, ppid, pgrp.
                let mut fields = stat.rsplit_once(')')?.1.split_whitespace();
                let state = fields.next()?;
                let pgrp: i32 = fields.nth(1)?.parse().ok()?;
                Some(pgrp == group && state != "Z" && state != "X")
            })
            .unwrap_or(false)
    })
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
    }
}
