//! How the output names a task: `<service>-<arch>`, the prefix of its log
//! lines, the key of its last lines and of its row in a failure summary.

use std::fmt;

use bakery_protocol::Arch;

/// A task's name in the output (`api-arm64`). One type, so the log prefix,
/// the tails kept for a failure and the reports that look them up cannot
/// spell it differently.
#[derive(Debug, Clone, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TaskLabel(String);

impl TaskLabel {
    /// The label of `service`'s task for `arch`.
    pub fn new(service: &str, arch: Arch) -> TaskLabel {
        let mut label = TaskLabel::default();
        label.set(service, arch);
        label
    }

    /// Makes this the label of `service`'s task for `arch`, reusing its
    /// buffer: the printer labels every line of a chatty build.
    pub fn set(&mut self, service: &str, arch: Arch) {
        self.0.clear();
        self.0.push_str(service);
        self.0.push('-');
        self.0.push_str(arch.as_str());
    }

    /// The label as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for TaskLabel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_label_is_service_dash_arch_and_set_reuses_it() {
        let mut label = TaskLabel::new("api", Arch::Arm64);
        assert_eq!(label.to_string(), "api-arm64");
        label.set("web", Arch::Amd64);
        assert_eq!(label.as_str(), "web-amd64");
        assert_eq!(label, TaskLabel::new("web", Arch::Amd64));
    }
}
