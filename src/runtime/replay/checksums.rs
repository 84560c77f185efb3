//! Which checksums replay believes: a capture taken on the protected host
//! with checksum offload on (the default on veth, virtio, docker and most
//! cloud NICs) holds the packets the kernel built with their TCP and UDP
//! checksums not yet computed, because the NIC computes them after the
//! capture point. Replay tells those apart from bad checksums
//! ([`crate::wire::Checksum::Partial`]) and decides per file from a sample
//! of its first packets, as Suricata's `checksum-checks: auto` does.

use serde::Serialize;

use crate::wire::{Checksum, PacketView, Transport};

/// Packets sampled at the start of each file: the TCP and UDP packets
/// captured whole.
pub const SAMPLE: u64 = 1000;

/// `--checksums`: how replay treats checksums.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum ChecksumMode {
    /// Decide per file from a sample: a checksum left for the NIC is
    /// accepted, a wrong one dropped, unless more than a tenth of the
    /// sample is wrong in some other way (a capture point that mangles
    /// checksums), when none is checked.
    #[default]
    Auto,
    /// Every checksum must be right: a partial one is bad.
    Verify,
    /// No checksum is checked: every packet is judged on its headers.
    Off,
}

impl ChecksumMode {
    /// Its name on the command line, in the summary and in JSON.
    pub const fn name(self) -> &'static str {
        match self {
            Self::Auto => "auto",
            Self::Verify => "verify",
            Self::Off => "off",
        }
    }
}

/// What replay does with one file's checksums.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Decided {
    /// Every checksum must be right.
    Verify,
    /// A checksum left for the NIC is accepted; a wrong one is dropped.
    Offload,
    /// None is checked.
    Off,
}

impl Decided {
    /// Its name in the summary and in JSON.
    pub const fn name(self) -> &'static str {
        match self {
            Self::Verify => "verify",
            Self::Offload => "offload",
            Self::Off => "off",
        }
    }
}

/// The checksums of a file's first [`SAMPLE`] TCP and UDP packets.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Sample {
    /// Packets sampled.
    pub sampled: u64,
    /// Of those, with a checksum left for the NIC.
    pub partial: u64,
    /// Of those, with a wrong checksum of any other kind.
    pub bad: u64,
}

impl Sample {
    /// True once [`SAMPLE`] packets are counted.
    pub const fn full(&self) -> bool {
        self.sampled >= SAMPLE
    }

    /// Counts `view` while the sample is not full.
    pub fn add(&mut self, view: &PacketView<'_>) {
        if self.sampled >= SAMPLE
            || !matches!(view.transport, Transport::Tcp(_) | Transport::Udp(_))
        {
            return;
        }
        match view.checksum {
            Checksum::Valid => {}
            Checksum::Partial => self.partial += 1,
            Checksum::Bad => self.bad += 1,
            // Cut short or fragmented: says nothing about offload.
            Checksum::Unverified => return,
        }
        self.sampled += 1;
    }

    /// What `mode` does with a file whose sample this is.
    pub const fn decide(&self, mode: ChecksumMode) -> Decided {
        match mode {
            ChecksumMode::Verify => Decided::Verify,
            ChecksumMode::Off => Decided::Off,
            ChecksumMode::Auto if self.bad * 10 > self.sampled => Decided::Off,
            ChecksumMode::Auto => Decided::Offload,
        }
    }
}

/// One file's decision, for the summary and the JSON output.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct FileChecksums {
    /// The file.
    pub file: String,
    /// What was asked.
    pub mode: ChecksumMode,
    /// What was decided.
    pub decided: Decided,
    /// What the sample held.
    pub sample: Sample,
    /// Packets over the whole file whose checksum was left for the NIC
    /// and was accepted.
    pub partial_accepted: u64,
}

/// The JSON line of a file's decision, beside the engine's events:
/// `{"event":"checksums","file":…,"mode":"auto","decided":"offload",…}`.
#[derive(Serialize)]
pub struct ChecksumsEvent<'a> {
    event: &'static str,
    #[serde(flatten)]
    checksums: &'a FileChecksums,
}

impl FileChecksums {
    /// Its JSON line, written before the file's packets.
    pub const fn event(&self) -> ChecksumsEvent<'_> {
        ChecksumsEvent { event: "checksums", checksums: self }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(sampled: u64, partial: u64, bad: u64) -> Sample {
        Sample { sampled, partial, bad }
    }

    #[test]
    fn auto_drops_wrong_checksums_and_turns_off_only_when_many_are_wrong() {
        assert_eq!(sample(1000, 0, 0).decide(ChecksumMode::Auto), Decided::Offload);
        assert_eq!(sample(1000, 600, 100).decide(ChecksumMode::Auto), Decided::Offload);
        assert_eq!(sample(1000, 0, 101).decide(ChecksumMode::Auto), Decided::Off);
        assert_eq!(sample(0, 0, 0).decide(ChecksumMode::Auto), Decided::Offload);
        assert_eq!(sample(1000, 999, 1).decide(ChecksumMode::Verify), Decided::Verify);
        assert_eq!(sample(1000, 0, 0).decide(ChecksumMode::Off), Decided::Off);
    }

    #[test]
    fn names_are_those_of_the_json() {
        for m in [ChecksumMode::Auto, ChecksumMode::Verify, ChecksumMode::Off] {
            assert_eq!(serde_json::to_value(m).unwrap(), m.name());
        }
        for d in [Decided::Verify, Decided::Offload, Decided::Off] {
            assert_eq!(serde_json::to_value(d).unwrap(), d.name());
        }
    }
}
