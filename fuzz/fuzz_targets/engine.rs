//! Any bytes through an engine with every stage on (a persona that
//! rewrites and answers, a hidden port, knocks, SPA), both directions and
//! both checksum modes; the first byte picks them.
#![no_main]

use std::sync::OnceLock;

use portcloak::engine::{ChecksumCheck, Meta};
use portcloak::{Config, Direction, Engine, Timestamp};

fn engine() -> &'static Engine {
    static ENGINE: OnceLock<Engine> = OnceLock::new();
    ENGINE.get_or_init(|| {
        let rules = r#"
[services]
tcp = [80]
udp = [53]
[probes]
os_detection = "off"
[persona]
name = "windows-1709"
[[hidden]]
port = 22
[knock]
sequence = ["tcp:7001", "udp:7002", "tcp:7003"]
[spa]
key_file = "/unused"
[tracking]
sources = 1024
flows = 1024
bans = 256
shards = 4
"#;
        let config = Config::from_toml(rules).unwrap_or_default();
        Engine::new(config).with_spa_key(vec![7; 32])
    })
}

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let Some((&mode, packet)) = data.split_first() else { return };
    let direction = if mode & 1 == 0 { Direction::Inbound } else { Direction::Outbound };
    let checksum = if mode & 2 == 0 { ChecksumCheck::Verify } else { ChecksumCheck::Kernel };
    let meta = Meta { checksum, proven: mode & 4 != 0, ..Meta::new(direction) };
    let mut bytes = packet.to_vec();
    let now = Timestamp::from_secs(1_700_000_000 + u64::from(mode >> 3));
    let _ = engine().handle_with(now, meta, &mut bytes);
});
