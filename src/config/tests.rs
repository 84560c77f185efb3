use super::*;

#[test]
fn empty_file_is_the_defaults() {
    assert_eq!(Config::from_toml("").unwrap(), Config::default());
}

#[test]
fn values_are_parsed() {
    let c = Config::from_toml(
        r#"
[services]
tcp = [22, "8000-8002"]
udp = [53]
[lists]
allow = ["198.18.0.0/15", "fd5c:a11::/32"]
[scan]
window = "90s"
[ban]
duration = "30m"
max_duration = "2d"
[policy]
closed_ports = "reject"
[probes]
ack = "off"
"#,
    )
    .unwrap();
    assert!(
        c.services.tcp.contains(22)
            && c.services.tcp.contains(8001)
            && !c.services.tcp.contains(8003)
    );
    assert_eq!(c.services.tcp.len(), 4);
    assert!(c.lists.allow[0].contains("198.19.1.1".parse().unwrap()));
    assert_eq!(c.scan.window.get(), Duration::from_secs(90));
    assert_eq!(c.ban.max_duration.get(), Duration::from_secs(2 * 86_400));
    assert_eq!(c.policy.closed_ports, ClosedPorts::Reject);
    assert_eq!(c.probes.ack, Action::Off);
}

fn error(text: &str) -> String {
    Config::from_toml(text).unwrap_err().to_string()
}

#[test]
fn unknown_keys_name_the_key_and_line() {
    let e = error("[scan]\nwindow = \"60s\"\nwindw = \"5s\"\n");
    assert!(e.starts_with("line 3: unknown key `scan.windw`"), "{e}");
    let e = error("\n[nosuch]\nx = 1\n");
    assert!(e.contains("line 2") && e.contains("nosuch"), "{e}");
}

#[test]
fn bad_values_name_the_key_and_line() {
    for (text, line, key) in [
        ("[scan]\n\nwindow = \"60x\"\n", 3, "scan.window"),
        ("[services]\ntcp = [0]\n", 2, "services.tcp"),
        ("[services]\ntcp = [\"90-80\"]\n", 2, "services.tcp"),
        ("[lists]\nallow = [\"10.0.0.0/40\"]\n", 2, "lists.allow"),
        ("[policy]\nclosed_ports = \"maybe\"\n", 2, "policy.closed_ports"),
        ("[probes]\nnull = true\n", 2, "probes.null"),
        ("[scan]\nclosed_port_threshold = 99\n", 2, "scan.closed_port_threshold"),
        ("[ban]\nduration = \"2h\"\nmax_duration = \"1h\"\n", 3, "ban.max_duration"),
        ("[tracking]\nshards = 3\n", 2, "tracking.shards"),
        ("[tracking]\nipv6_prefix = 0\n", 2, "tracking.ipv6_prefix"),
        ("[tracking]\nipv6_escalate = 9\n", 2, "tracking.ipv6_escalate"),
        ("[tracking]\nipv6_escalate_prefix = 64\n", 2, "tracking.ipv6_escalate_prefix"),
        ("[daemon]\nmetrics = \"localhost\"\n", 2, "daemon.metrics"),
        ("[daemon]\nmetrics = \"127.0.0.1\"\n", 2, "daemon.metrics"),
    ] {
        let e = error(text);
        assert!(e.starts_with(&format!("line {line}:")), "{text:?}: {e}");
        assert!(e.contains(&format!("`{key}`")), "{text:?}: {e}");
    }
}

#[test]
fn a_narrower_ipv6_prefix_needs_a_narrower_escalation() {
    let e = error("[tracking]\nipv6_prefix = 40\n");
    assert!(e.contains("`tracking.ipv6_escalate_prefix`") && e.contains("(40)"), "{e}");
    assert!(Config::from_toml("[tracking]\nipv6_prefix = 40\nipv6_escalate = 0\n").is_ok());
}

#[test]
fn syntax_errors_have_a_line() {
    let e = error("[scan]\nwindow = \n");
    assert!(e.contains("line 2"), "{e}");
}

#[test]
fn rules_built_in_code_are_checked_like_a_file() {
    // The 17th hidden port would overflow the gate's 16-bit masks: it can
    // no more reach the engine from code than from a file.
    let hidden = (1..=17)
        .map(|port| Hidden { port: 2000 + port, proto: GateProto::Tcp, open_for: Dur::secs(30) })
        .collect();
    let mut rules = Rules { hidden, ..Rules::default() };
    let e = Config::try_from(rules.clone()).unwrap_err();
    assert_eq!((e.section.as_str(), e.key.as_str()), ("hidden", "port"), "{e}");
    rules.hidden.truncate(16);
    assert!(Config::try_from(rules).is_ok());

    let mut rules = Rules::default();
    rules.tracking.shards = 3;
    let e = Config::try_from(rules).unwrap_err();
    assert_eq!(e.to_string(), "key `tracking.shards` must be a power of two up to 4096");
    // From a file, the same check names the line too.
    let e = error("\n[tracking]\nshards = 3\n");
    assert_eq!(e, "line 3: key `tracking.shards` must be a power of two up to 4096");
}

#[test]
fn a_config_read_back_is_checked_again() {
    let text = serde_json::to_string(&Config::default()).unwrap();
    let back: Config = serde_json::from_str(&text).unwrap();
    assert_eq!(back, Config::default());
    let bad = text.replace("\"shards\":64", "\"shards\":3");
    assert_ne!(bad, text, "the default shard count is in the text");
    assert!(serde_json::from_str::<Config>(&bad).is_err());
}

#[test]
fn metrics_are_served_on_loopback_by_default_and_can_be_turned_off() {
    let d = Config::default().daemon.clone();
    assert_eq!(d.metrics_addr(), Some("127.0.0.1:9469".parse().expect("address")));
    let off = Config::from_toml("[daemon]\nmetrics = \"\"\n").expect("rules");
    assert_eq!(off.daemon.metrics_addr(), None);
    let v6 = Config::from_toml("[daemon]\nmetrics = \"[::1]:9100\"\n").expect("rules");
    assert_eq!(v6.daemon.metrics_addr(), Some("[::1]:9100".parse().expect("address")));
}
