//! The metadata service fence: the user data carries the injected host private key, and the
//! cloud's metadata service serves the user data to any process on the server, so cloud-init's
//! first command keeps 169.254.169.254 from containers and non-root users (`docs/DEPLOY.md`).

/// The address of the cloud's metadata service (DigitalOcean's, like most clouds'): it serves
/// the droplet's user data, the injected host private key included, to any process that asks.
pub const METADATA_ADDRESS: &str = "169.254.169.254";

/// The iptables rules that keep the metadata service from everyone but root, each with the
/// chain it goes in: containers (forwarded traffic passes Docker's `DOCKER-USER` chain, which
/// Docker creates if missing, jumps to first and never flushes) and local users other than root
/// (`OUTPUT`, by owner).
pub const METADATA_RULES: [(&str, &str); 2] = [
    ("DOCKER-USER", "-d 169.254.169.254/32 -j DROP"),
    (
        "OUTPUT",
        "-d 169.254.169.254/32 -m owner ! --uid-owner 0 -j REJECT",
    ),
];

/// The shell script (cloud-init `bootcmd`) that installs [`METADATA_RULES`]: the
/// `DOCKER-USER` chain created if missing, each rule inserted first unless it is there (so
/// every boot leaves exactly one copy). Any failure (no iptables) fails the script, and so
/// cloud-init: a server whose metadata is not fenced off is never reported ready.
pub fn metadata_firewall() -> String {
    let mut script = String::from(
        "set -eu\niptables -w -n -L DOCKER-USER >/dev/null 2>&1 || iptables -w -N DOCKER-USER\n",
    );
    for (chain, rule) in METADATA_RULES {
        script.push_str(&format!(
            "iptables -w -C {chain} {rule} 2>/dev/null || iptables -w -I {chain} 1 {rule}\n"
        ));
    }
    script
}

/// Deletes cloud-init's copies of the user data on disk once it has been applied (root-only
/// files, rewritten at the next boot; the firewall above is what keeps the key from everyone
/// else).
pub(crate) const FORGET_USER_DATA: &str = "rm -f /var/lib/cloud/instances/*/user-data.txt* \
     /var/lib/cloud/instances/*/cloud-config.txt /var/lib/cloud/instance/user-data.txt*";

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{cloud_init, generate};

    /// cloud-init's module order on Ubuntu's images (`cloud_init_modules` in
    /// /etc/cloud/cloud.cfg, the init stage), up to the module that writes the host key.
    const INIT_MODULES: [&str; 14] = [
        "seed_random",
        "bootcmd",
        "write_files",
        "growpart",
        "resizefs",
        "disk_setup",
        "mounts",
        "set_hostname",
        "update_hostname",
        "update_etc_hosts",
        "ca_certs",
        "rsyslog",
        "users_groups",
        "ssh",
    ];

    /// Checks one iptables command line against the grammar these rules use: `iptables -w`,
    /// then `-N CHAIN`, `-n -L CHAIN`, `-C CHAIN RULE` or `-I CHAIN 1 RULE`, where RULE is
    /// `-d A.B.C.D/N`, optionally `-m owner ! --uid-owner N`, then `-j DROP|REJECT`.
    fn iptables_form(line: &str) -> Result<(), String> {
        let words: Vec<&str> = line.split_whitespace().collect();
        let bad = |why: &str| Err(format!("{why}: {line}"));
        let chain_ok = |c: &str| {
            !c.is_empty()
                && c.len() <= 28
                && c.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        };
        let ["iptables", "-w", rest @ ..] = words.as_slice() else {
            return bad("not `iptables -w`");
        };
        let rule = match rest {
            ["-N", chain] | ["-n", "-L", chain] => {
                return if chain_ok(chain) {
                    Ok(())
                } else {
                    bad("chain")
                };
            }
            ["-C", chain, rule @ ..] | ["-I", chain, "1", rule @ ..] if chain_ok(chain) => rule,
            _ => return bad("command"),
        };
        let mut rule = rule;
        if let ["-d", cidr, more @ ..] = rule {
            let (ip, len) = cidr.split_once('/').ok_or("no prefix length")?;
            ip.parse::<std::net::Ipv4Addr>()
                .map_err(|e| e.to_string())?;
            (len.parse::<u8>().map_err(|e| e.to_string())? <= 32)
                .then_some(())
                .ok_or("prefix")?;
            rule = more;
        } else {
            return bad("no destination");
        }
        if let ["-m", "owner", "!", "--uid-owner", uid, more @ ..] = rule {
            uid.parse::<u32>().map_err(|e| e.to_string())?;
            rule = more;
        }
        match rule {
            ["-j", "DROP" | "REJECT"] => Ok(()),
            _ => bad("target"),
        }
    }

    #[test]
    fn the_metadata_service_is_fenced_off_before_the_host_key_is_installed() {
        let deploy = generate("deploy").unwrap();
        let admin = generate("admin").unwrap();
        let host = generate("host").unwrap();
        let data = cloud_init(
            "deploy",
            &deploy.public_openssh,
            &admin.public_openssh,
            &host,
        )
        .unwrap();
        let config: serde_json::Value = serde_json::from_str(data.lines().nth(1).unwrap()).unwrap();
        // The firewall is bootcmd's first (and only) command; bootcmd runs before the modules
        // that create the users and write the host key, and at every boot.
        let bootcmd = config["bootcmd"].as_array().unwrap();
        assert_eq!(bootcmd.len(), 1);
        let script = bootcmd[0].as_str().unwrap();
        assert_eq!(script, metadata_firewall());
        let at = |m: &str| INIT_MODULES.iter().position(|x| *x == m).unwrap();
        assert!(at("bootcmd") < at("users_groups") && at("bootcmd") < at("ssh"));
        assert!(
            config.get("write_files").is_none(),
            "nothing runs before bootcmd"
        );
        // Each rule once, in its chain, as iptables reads it; the chain is created if missing.
        let lines: Vec<&str> = script.lines().collect();
        assert_eq!(lines[0], "set -eu");
        for line in &lines[1..] {
            for command in line.split(" || ") {
                let command = command
                    .trim_end_matches(" >/dev/null 2>&1")
                    .trim_end_matches(" 2>/dev/null");
                iptables_form(command).unwrap();
            }
        }
        assert!(lines[1].ends_with("|| iptables -w -N DOCKER-USER"));
        for (chain, rule) in METADATA_RULES {
            assert!(rule.contains(METADATA_ADDRESS));
            let check = format!("iptables -w -C {chain} {rule}");
            let insert = format!("iptables -w -I {chain} 1 {rule}");
            assert_eq!(
                lines
                    .iter()
                    .filter(|l| l.contains(&check) && l.ends_with(&insert))
                    .count(),
                1,
                "{chain}: {script}"
            );
        }
        assert!(script.contains("-I DOCKER-USER 1 -d 169.254.169.254/32 -j DROP"));
        assert!(
            script.contains("-I OUTPUT 1 -d 169.254.169.254/32 -m owner ! --uid-owner 0 -j REJECT")
        );
        // bash agrees it is a script.
        let checked = std::process::Command::new("bash")
            .args(["-n", "-c", script])
            .status()
            .unwrap();
        assert!(checked.success());
        // The grammar refuses what iptables would not take.
        for wrong in [
            "iptables -w -I OUTPUT 1 -d 169.254.169.999/32 -j DROP",
            "iptables -w -I OUTPUT 1 -d 169.254.169.254/33 -j DROP",
            "iptables -w -I OUTPUT 1 -d 169.254.169.254/32 -m owner ! --uid-owner x -j REJECT",
            "iptables -w -I OUTPUT 1 -d 169.254.169.254/32 -j DENY",
        ] {
            assert!(iptables_form(wrong).is_err(), "{wrong}");
        }
        // Afterwards cloud-init's own copies of the user data are removed.
        let runcmd = config["runcmd"].as_array().unwrap();
        assert!(
            runcmd
                .last()
                .unwrap()
                .as_str()
                .unwrap()
                .starts_with("rm -f /var/lib/cloud/instances/*/user-data.txt*")
        );
    }
}
