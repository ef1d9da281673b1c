//! Collects the platform facts an agent reports (sysinfo and /etc/os-release), and detects whether it
//! runs in a container, a VM or on bare metal.

use std::collections::BTreeMap;
use std::path::Path;

use polarizer_shared::{AgentFacts, PlatformKind};
use sysinfo::{CpuRefreshKind, MemoryRefreshKind, RefreshKind, System};

pub fn collect(
    name: &str,
    labels: &BTreeMap<String, String>,
    platform_override: Option<PlatformKind>,
) -> AgentFacts {
    let refresh = RefreshKind::nothing()
        .with_cpu(CpuRefreshKind::nothing())
        .with_memory(MemoryRefreshKind::nothing().with_ram());
    let (cpus, memory_bytes) = match System::new_with_specifics(refresh) {
        Ok(system) => (system.cpus().len() as u32, system.total_memory()),
        Err(_) => (
            std::thread::available_parallelism()
                .map(|n| n.get() as u32)
                .unwrap_or(1),
            0,
        ),
    };
    AgentFacts {
        name: name.to_string(),
        hostname: System::host_name().unwrap_or_default(),
        os: std::env::consts::OS.to_string(),
        distro_id: System::distribution_id(),
        distro_version: System::os_version().unwrap_or_default(),
        kernel: System::kernel_version().unwrap_or_default(),
        arch: System::cpu_arch(),
        cpus,
        memory_bytes,
        agent_version: env!("CARGO_PKG_VERSION").to_string(),
        labels: labels.clone(),
        platform: platform_override
            .unwrap_or_else(|| detect_platform(&PlatformEvidence::read(Path::new("/")))),
    }
}

/// What the system shows about where it runs, read from files so detection is testable on any tree.
#[derive(Debug, Default)]
pub struct PlatformEvidence {
    pub container_marker_file: bool,
    pub container_env: bool,
    pub pid1_cgroup: String,
    pub dmi_vendor_and_product: String,
    pub cpu_flags_hypervisor: bool,
}

impl PlatformEvidence {
    pub fn read(root: &Path) -> PlatformEvidence {
        let read =
            |relative: &str| std::fs::read_to_string(root.join(relative)).unwrap_or_default();
        PlatformEvidence {
            container_marker_file: root.join(".dockerenv").exists()
                || root.join("run/.containerenv").exists(),
            container_env: std::env::var_os("container").is_some(),
            pid1_cgroup: read("proc/1/cgroup"),
            dmi_vendor_and_product: format!(
                "{} {}",
                read("sys/class/dmi/id/sys_vendor"),
                read("sys/class/dmi/id/product_name")
            ),
            cpu_flags_hypervisor: read("proc/cpuinfo").lines().any(|line| {
                line.starts_with("flags")
                    && line.split_whitespace().any(|flag| flag == "hypervisor")
            }),
        }
    }
}

pub fn detect_platform(evidence: &PlatformEvidence) -> PlatformKind {
    const CONTAINER_CGROUPS: [&str; 5] = ["docker", "kubepods", "containerd", "libpod", "lxc"];
    const VM_VENDORS: [&str; 10] = [
        "QEMU",
        "KVM",
        "VMware",
        "VirtualBox",
        "Xen",
        "Virtual Machine",
        "Amazon EC2",
        "Google Compute Engine",
        "OpenStack",
        "Bochs",
    ];
    if evidence.container_marker_file
        || evidence.container_env
        || CONTAINER_CGROUPS
            .iter()
            .any(|marker| evidence.pid1_cgroup.contains(marker))
    {
        return PlatformKind::Container;
    }
    if evidence.cpu_flags_hypervisor
        || VM_VENDORS
            .iter()
            .any(|vendor| evidence.dmi_vendor_and_product.contains(vendor))
    {
        return PlatformKind::Vm;
    }
    PlatformKind::Baremetal
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn platform_detection_prefers_container_then_vm() {
        assert_eq!(
            detect_platform(&PlatformEvidence::default()),
            PlatformKind::Baremetal
        );
        let vm = PlatformEvidence {
            dmi_vendor_and_product: "QEMU Standard PC (Q35 + ICH9, 2009)".into(),
            ..Default::default()
        };
        assert_eq!(detect_platform(&vm), PlatformKind::Vm);
        let flagged = PlatformEvidence {
            cpu_flags_hypervisor: true,
            ..Default::default()
        };
        assert_eq!(detect_platform(&flagged), PlatformKind::Vm);
        let container_in_vm = PlatformEvidence {
            pid1_cgroup: "0::/kubepods/besteffort/pod1".into(),
            cpu_flags_hypervisor: true,
            ..Default::default()
        };
        assert_eq!(detect_platform(&container_in_vm), PlatformKind::Container);
    }

    #[test]
    fn evidence_is_read_from_a_tree() {
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(root.path().join("run")).unwrap();
        std::fs::write(root.path().join("run/.containerenv"), "").unwrap();
        assert!(PlatformEvidence::read(root.path()).container_marker_file);
    }

    #[test]
    fn facts_of_this_machine_are_filled_in() {
        let facts = collect("vm-1", &BTreeMap::new(), Some(PlatformKind::Vm));
        assert_eq!(facts.name, "vm-1");
        assert!(facts.cpus >= 1);
        assert!(facts.memory_bytes > 0);
        assert!(!facts.kernel.is_empty());
        assert!(!facts.arch.is_empty());
    }
}
