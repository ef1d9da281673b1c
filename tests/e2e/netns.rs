//! A host of its own for an agent: a network namespace joined to this one by a veth pair, which a test can
//! cut and restore. Needs root (namespaces, links); `Link::new` prints why and gives `None` otherwise.

use std::net::Ipv4Addr;
use std::process::Command;

fn ip(args: &[&str]) -> Result<(), String> {
    let output = Command::new("ip")
        .args(args)
        .output()
        .map_err(|err| format!("ip: {err}"))?;
    if output.status.success() {
        Ok(())
    } else {
        Err(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr).trim()
        ))
    }
}

/// A network namespace joined to this one by a veth pair: the host end here, the agent's end there.
pub struct Link {
    pub netns: String,
    host_end: String,
    pub host_ip: Ipv4Addr,
    pub agent_ip: Ipv4Addr,
}

impl Link {
    /// `None` (with the reason printed) where this process may not make namespaces.
    pub fn new() -> Option<Link> {
        let pid = std::process::id();
        let subnet = (pid % 250) as u8;
        let link = Link {
            netns: format!("pz-cut-{pid}"),
            host_end: format!("pzh{pid}"),
            host_ip: Ipv4Addr::new(10, 213, subnet, 1),
            agent_ip: Ipv4Addr::new(10, 213, subnet, 2),
        };
        let agent_end = format!("pza{pid}");
        let host_cidr = format!("{}/30", link.host_ip);
        let agent_cidr = format!("{}/30", link.agent_ip);
        let made = ip(&["netns", "add", &link.netns])
            .and_then(|()| {
                ip(&[
                    "link",
                    "add",
                    &link.host_end,
                    "type",
                    "veth",
                    "peer",
                    "name",
                    &agent_end,
                ])
            })
            .and_then(|()| ip(&["link", "set", &agent_end, "netns", &link.netns]))
            .and_then(|()| ip(&["addr", "add", &host_cidr, "dev", &link.host_end]))
            .and_then(|()| ip(&["link", "set", &link.host_end, "up"]))
            .and_then(|()| {
                ip(&[
                    "-n",
                    &link.netns,
                    "addr",
                    "add",
                    &agent_cidr,
                    "dev",
                    &agent_end,
                ])
            })
            .and_then(|()| ip(&["-n", &link.netns, "link", "set", &agent_end, "up"]))
            .and_then(|()| ip(&["-n", &link.netns, "link", "set", "lo", "up"]));
        match made {
            Ok(()) => Some(link),
            Err(reason) => {
                eprintln!("skipped: cannot make a network namespace here (needs root): {reason}");
                None
            }
        }
    }

    pub fn cut(&self) {
        ip(&["link", "set", &self.host_end, "down"]).expect("cut the link");
    }

    pub fn restore(&self) {
        ip(&["link", "set", &self.host_end, "up"]).expect("restore the link");
    }
}

impl Drop for Link {
    fn drop(&mut self) {
        // Deleting the namespace deletes its end of the pair, and with it ours.
        let _ = ip(&["netns", "del", &self.netns]);
        let _ = ip(&["link", "del", &self.host_end]);
    }
}
