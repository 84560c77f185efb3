//! Any bytes through an engine with every stage on
//! (`tests/fixtures/every-stage.toml`), both directions and both checksum
//! modes; the first byte picks them.
#![no_main]

use std::sync::OnceLock;

use portcloak::engine::{ChecksumCheck, Meta};
use portcloak::{Config, Direction, Engine, Timestamp};

fn engine() -> &'static Engine {
    static ENGINE: OnceLock<Engine> = OnceLock::new();
    ENGINE.get_or_init(|| {
        // Every stage on, and the probe bans off that would stop nmap's T2
        // and T3 before the persona answers them.
        let rules = concat!(
            "[probes]\nos_detection = \"off\"\nnull = \"off\"\nsyn_fin = \"off\"\n",
            include_str!("../../tests/fixtures/every-stage.toml")
        );
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
