//! The client side of hidden services: `portcloak knock` and `portcloak
//! keygen`.
//!
//! An SPA packet is sealed with the shared key and sent as one UDP
//! datagram; nothing answers it. A knock sequence is one TCP SYN (a
//! connect that is abandoned at once, so the kernel sends no retransmission
//! into the sequence) or one UDP datagram per step, in order.

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream, UdpSocket};
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context;

use crate::config::{GateProto, KnockStep};
use crate::gate::spa::{self, Request};

/// Fills `buf` from the kernel's random source.
fn random(buf: &mut [u8]) -> anyhow::Result<()> {
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(buf))
        .context("reading /dev/urandom")
}

/// Writes a new 32-byte key to `path` (mode 0600); refuses to overwrite.
pub fn keygen(path: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut key = [0u8; 32];
    random(&mut key)?;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("creating {} (it must not exist yet)", path.display()))?;
    f.write_all(spa::key_text(&key).as_bytes())?;
    f.sync_all()?;
    Ok(())
}

/// Reads a key file (the client need not be root, so its mode is not checked).
pub fn read_key(path: &Path) -> anyhow::Result<Vec<u8>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading the key file {}", path.display()))?;
    spa::parse_key(&text).map_err(|e| anyhow::anyhow!("the key file {}: {e}", path.display()))
}

/// A UDP socket on any local address and port of `host`'s family.
fn udp_towards(host: IpAddr) -> std::io::Result<UdpSocket> {
    let any: IpAddr = if host.is_ipv4() {
        std::net::Ipv4Addr::UNSPECIFIED.into()
    } else {
        std::net::Ipv6Addr::UNSPECIFIED.into()
    };
    UdpSocket::bind(SocketAddr::new(any, 0))
}

/// The address this host sends from to reach `to`.
fn source_for(to: SocketAddr) -> anyhow::Result<IpAddr> {
    let s = udp_towards(to.ip())?;
    s.connect(to).with_context(|| format!("no route to {to}"))?;
    Ok(s.local_addr()?.ip())
}

/// Sends one SPA packet asking `host` to open `proto`/`port` for `source`
/// (this host's address towards `host` when `None`). Returns the address
/// it asked for.
pub fn send_spa(
    host: IpAddr,
    spa_port: u16,
    key: &[u8],
    proto: GateProto,
    port: u16,
    source: Option<IpAddr>,
) -> anyhow::Result<IpAddr> {
    let to = SocketAddr::new(host, spa_port);
    let ip = match source {
        Some(ip) => ip,
        None => source_for(to)?,
    };
    let mut nonce = [0u8; 16];
    random(&mut nonce)?;
    let timestamp = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs();
    let packet = spa::seal(key, &Request { timestamp, nonce, port, protocol: proto.number(), ip });
    udp_towards(host)?.send_to(&packet, to).with_context(|| format!("sending to {to}"))?;
    Ok(ip)
}

/// Knocks `steps` on `host`, `gap` apart.
pub fn send_knocks(host: IpAddr, steps: &[KnockStep], gap: Duration) -> anyhow::Result<()> {
    for (i, step) in steps.iter().enumerate() {
        if i > 0 {
            std::thread::sleep(gap);
        }
        let to = SocketAddr::new(host, step.port);
        match step.proto {
            GateProto::Udp => {
                udp_towards(host)?.send_to(b"knock", to)?;
            }
            // The SYN leaves at once; the short timeout abandons the
            // connect before the kernel would retransmit it.
            GateProto::Tcp => match TcpStream::connect_timeout(&to, Duration::from_millis(200)) {
                Ok(_) => anyhow::bail!("{step} answered: it is not a knock port of this host"),
                Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {}
                Err(e) => anyhow::bail!("knocking on {step}: {e}"),
            },
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    #[test]
    fn keys_from_keygen_load_and_the_daemon_refuses_a_readable_one() {
        let dir = std::env::temp_dir().join(format!("portcloak-key-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("k");
        keygen(&path).unwrap();
        assert!(keygen(&path).is_err(), "never overwrites");
        let key = read_key(&path).unwrap();
        assert_eq!(key.len(), 32);
        assert_eq!(crate::runtime::daemon::read_spa_key(&path).unwrap(), key);
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let err = crate::runtime::daemon::read_spa_key(&path).unwrap_err().to_string();
        assert!(err.contains("mode 644") && err.contains("chmod 600"), "{err}");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        let link = dir.join("link");
        std::os::unix::fs::symlink(&path, &link).unwrap();
        let err = crate::runtime::daemon::read_spa_key(&link).unwrap_err().to_string();
        assert!(err.contains("symbolic link"), "{err}");
        // Owned by another user (the test runs as root in CI; elsewhere
        // chown fails and the daemon's own user is the owner anyway).
        if std::os::unix::fs::chown(&path, Some(65_534), None).is_ok() {
            let err = crate::runtime::daemon::read_spa_key(&path).unwrap_err().to_string();
            assert!(err.contains("belongs to uid 65534") && err.contains("chown root"), "{err}");
        } else {
            assert!(
                std::env::var("CI").as_deref() != Ok("true"),
                "CI runs as root: chown must work"
            );
        }
        std::fs::remove_dir_all(dir).unwrap();
    }
}
