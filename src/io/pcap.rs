//! A streaming reader of pcap and pcapng files.
//!
//! Reads both byte orders, microsecond and nanosecond pcap, and pcapng's
//! enhanced, simple and obsolete packet blocks with per-interface link types
//! and timestamp resolutions. Frames are lent from one reused buffer; a
//! file of any size is read in constant memory.

use std::fs::File;
use std::io::{self, BufReader, Read};
use std::path::{Path, PathBuf};

use thiserror::Error;

use crate::time::Timestamp;

/// Why a capture could not be read.
#[derive(Debug, Error)]
pub enum SourceError {
    /// The file could not be opened or read.
    #[error("cannot read {path}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
    /// The bytes are not a capture portcloak understands.
    #[error("cannot read {path}: {message}")]
    Format {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
}

/// One captured frame, borrowed from the reader.
#[derive(Clone, Copy, Debug)]
pub struct Frame<'a> {
    /// Capture time.
    pub ts: Timestamp,
    /// The pcap `LINKTYPE_*` of its interface.
    pub linktype: u32,
    /// The captured bytes, link layer included.
    pub data: &'a [u8],
    /// The frame's length on the wire; more than `data.len()` when the
    /// capture's snap length cut it short.
    pub orig_len: usize,
}

/// Largest block or record accepted, so a corrupt length cannot exhaust memory.
const MAX_BLOCK: usize = 64 << 20;

#[derive(Clone, Copy, Debug)]
enum Format {
    Pcap { big_endian: bool, nanos: bool, linktype: u32 },
    PcapNg { big_endian: bool },
}

#[derive(Clone, Copy, Debug)]
struct Interface {
    linktype: u32,
    /// Timestamp units per second.
    units_per_sec: u128,
}

/// A capture file opened for reading.
pub struct PcapReader {
    path: PathBuf,
    input: Counting<BufReader<File>>,
    format: Format,
    interfaces: Vec<Interface>,
    buf: Vec<u8>,
    last_ts: Timestamp,
}

impl PcapReader {
    /// Opens `path` and reads its file header.
    pub fn open(path: &Path) -> Result<Self, SourceError> {
        let file =
            File::open(path).map_err(|source| SourceError::Io { path: path.to_owned(), source })?;
        let mut reader = Self {
            path: path.to_owned(),
            input: Counting { inner: BufReader::with_capacity(1 << 16, file), count: 0 },
            format: Format::PcapNg { big_endian: false },
            interfaces: Vec::new(),
            buf: Vec::with_capacity(1 << 16),
            last_ts: Timestamp::ZERO,
        };
        let mut magic = [0u8; 4];
        reader.read_exact_or(&mut magic, "file is empty or shorter than a capture header")?;
        reader.format = match u32::from_le_bytes(magic) {
            0xa1b2_c3d4 => reader.pcap_header(false, false)?,
            0xd4c3_b2a1 => reader.pcap_header(true, false)?,
            0xa1b2_3c4d => reader.pcap_header(false, true)?,
            0x4d3c_b2a1 => reader.pcap_header(true, true)?,
            0x0a0d_0d0a => reader.section_header()?,
            _ => {
                return Err(reader.format_error("not a pcap or pcapng file (unknown magic number)"));
            }
        };
        Ok(reader)
    }

    /// Bytes consumed so far, for progress reporting.
    pub fn bytes_read(&self) -> u64 {
        self.input.count
    }

    /// The next frame, or `None` at the end of the file.
    pub fn next_frame(&mut self) -> Result<Option<Frame<'_>>, SourceError> {
        match self.format {
            Format::Pcap { big_endian, nanos, linktype } => {
                let mut header = [0u8; 16];
                if !self.read_header(&mut header)? {
                    return Ok(None);
                }
                let word = |i: usize| read_u32(&header, i, big_endian);
                let (secs, frac, caplen, orig_len) =
                    (word(0), word(4), word(8) as usize, word(12) as usize);
                if caplen > MAX_BLOCK {
                    return Err(
                        self.format_error(&format!("record of {caplen} bytes is too large"))
                    );
                }
                self.fill(caplen)?;
                let micros = if nanos { u64::from(frac) / 1000 } else { u64::from(frac) };
                let ts = Timestamp::from_micros(u64::from(secs) * 1_000_000 + micros);
                Ok(Some(Frame { ts, linktype, data: &self.buf, orig_len }))
            }
            Format::PcapNg { .. } => self.next_ng_frame(),
        }
    }

    fn pcap_header(&mut self, big_endian: bool, nanos: bool) -> Result<Format, SourceError> {
        let mut rest = [0u8; 20];
        self.read_exact_or(&mut rest, "truncated pcap file header")?;
        let linktype = read_u32(&rest, 16, big_endian) & 0x0fff_ffff;
        Ok(Format::Pcap { big_endian, nanos, linktype })
    }

    /// Reads the rest of a section header block whose type was just read.
    fn section_header(&mut self) -> Result<Format, SourceError> {
        let mut total = [0u8; 4];
        self.read_exact_or(&mut total, "truncated pcapng section header")?;
        self.section_header_from(total)
    }

    fn next_ng_frame(&mut self) -> Result<Option<Frame<'_>>, SourceError> {
        loop {
            let Format::PcapNg { big_endian } = self.format else {
                return Ok(None);
            };
            let mut head = [0u8; 8];
            if !self.read_header(&mut head)? {
                return Ok(None);
            }
            let kind = read_u32(&head, 0, big_endian);
            if kind == 0x0a0d_0d0a {
                self.format = self.section_header_from([head[4], head[5], head[6], head[7]])?;
                continue;
            }
            let total = read_u32(&head, 4, big_endian) as usize;
            if !(12..=MAX_BLOCK).contains(&total) || total % 4 != 0 {
                return Err(self.format_error(&format!("bad pcapng block length {total}")));
            }
            self.fill(total - 8)?;
            let body_len = total - 12;
            let word = |buf: &[u8], i: usize| read_u32(buf, i, big_endian);
            match kind {
                1 => {
                    let linktype = u32::from(read_u16(&self.buf, 0, big_endian));
                    let units_per_sec =
                        tsresol(self.buf.get(8..body_len).unwrap_or_default(), big_endian);
                    self.interfaces.push(Interface { linktype, units_per_sec });
                }
                2 | 6 => {
                    // Enhanced (6) and obsolete (2) packet blocks share the layout after the id.
                    let iface = if kind == 6 {
                        word(&self.buf, 0) as usize
                    } else {
                        usize::from(read_u16(&self.buf, 0, big_endian))
                    };
                    let units =
                        (u64::from(word(&self.buf, 4)) << 32) | u64::from(word(&self.buf, 8));
                    let caplen = word(&self.buf, 12) as usize;
                    let orig_len = word(&self.buf, 16) as usize;
                    let Some(&Interface { linktype, units_per_sec }) = self.interfaces.get(iface)
                    else {
                        return Err(
                            self.format_error(&format!("packet on undeclared interface {iface}"))
                        );
                    };
                    if 20 + caplen > body_len {
                        return Err(
                            self.format_error("packet block shorter than its captured length")
                        );
                    }
                    let micros = u128::from(units) * 1_000_000 / units_per_sec.max(1);
                    self.last_ts =
                        Timestamp::from_micros(u64::try_from(micros).unwrap_or(u64::MAX));
                    let data = self.buf.get(20..20 + caplen).unwrap_or_default();
                    return Ok(Some(Frame { ts: self.last_ts, linktype, data, orig_len }));
                }
                3 => {
                    let Some(&Interface { linktype, .. }) = self.interfaces.first() else {
                        return Err(self.format_error("simple packet block before any interface"));
                    };
                    let orig_len = word(&self.buf, 0) as usize;
                    let caplen = orig_len.min(body_len.saturating_sub(4));
                    let data = self.buf.get(4..4 + caplen).unwrap_or_default();
                    return Ok(Some(Frame { ts: self.last_ts, linktype, data, orig_len }));
                }
                _ => {}
            }
        }
    }

    /// Reads a section header block after its type and raw total length:
    /// the byte-order magic says how to read that length and everything after.
    fn section_header_from(&mut self, total: [u8; 4]) -> Result<Format, SourceError> {
        let mut bom = [0u8; 4];
        self.read_exact_or(&mut bom, "truncated pcapng section header")?;
        let big_endian = match u32::from_le_bytes(bom) {
            0x1a2b_3c4d => false,
            0x4d3c_2b1a => true,
            _ => return Err(self.format_error("bad pcapng byte-order magic")),
        };
        let total = read_u32(&total, 0, big_endian) as usize;
        if !(28..=MAX_BLOCK).contains(&total) {
            return Err(self.format_error("bad pcapng section header length"));
        }
        self.fill(total - 12)?;
        self.interfaces.clear();
        Ok(Format::PcapNg { big_endian })
    }

    /// Reads a record or block header; false at a clean end of file.
    fn read_header(&mut self, header: &mut [u8]) -> Result<bool, SourceError> {
        let mut got = 0;
        while got < header.len() {
            let n = match self.input.read(header.get_mut(got..).unwrap_or_default()) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(source) => {
                    return Err(SourceError::Io { path: self.path.clone(), source });
                }
            };
            if n == 0 {
                return if got == 0 {
                    Ok(false)
                } else {
                    Err(self.format_error("file ends inside a record header"))
                };
            }
            got += n;
        }
        Ok(true)
    }

    fn fill(&mut self, len: usize) -> Result<(), SourceError> {
        self.buf.resize(len, 0);
        let mut buf = std::mem::take(&mut self.buf);
        let result = self.read_exact_or(&mut buf, "file ends inside a packet");
        self.buf = buf;
        result
    }

    fn read_exact_or(&mut self, buf: &mut [u8], what: &str) -> Result<(), SourceError> {
        self.input.read_exact(buf).map_err(|source| match source.kind() {
            io::ErrorKind::UnexpectedEof => self.format_error(what),
            _ => SourceError::Io { path: self.path.clone(), source },
        })
    }

    fn format_error(&self, message: &str) -> SourceError {
        SourceError::Format { path: self.path.clone(), message: message.to_owned() }
    }
}

/// The `if_tsresol` option of an interface block, as units per second.
fn tsresol(mut options: &[u8], big_endian: bool) -> u128 {
    while options.len() >= 4 {
        let code = read_u16(options, 0, big_endian);
        let len = usize::from(read_u16(options, 2, big_endian));
        if code == 0 {
            break;
        }
        if code == 9 && len == 1 {
            if let Some(&v) = options.get(4) {
                let exp = u32::from(v & 0x7f).min(30);
                return if v & 0x80 == 0 { 10u128.pow(exp.min(24)) } else { 1u128 << exp };
            }
        }
        let step = 4 + len.div_ceil(4) * 4;
        options = options.get(step..).unwrap_or_default();
    }
    1_000_000
}

fn read_u32(buf: &[u8], at: usize, big_endian: bool) -> u32 {
    let b: [u8; 4] = buf.get(at..at + 4).and_then(|s| s.try_into().ok()).unwrap_or([0; 4]);
    if big_endian { u32::from_be_bytes(b) } else { u32::from_le_bytes(b) }
}

fn read_u16(buf: &[u8], at: usize, big_endian: bool) -> u16 {
    let b: [u8; 2] = buf.get(at..at + 2).and_then(|s| s.try_into().ok()).unwrap_or([0; 2]);
    if big_endian { u16::from_be_bytes(b) } else { u16::from_le_bytes(b) }
}

struct Counting<R> {
    inner: R,
    count: u64,
}

impl<R: Read> Read for Counting<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.count += n as u64;
        Ok(n)
    }
}

/// Writes frames as a pcap file (microsecond, little-endian). Used by tests
/// and benches to build captures; replay never writes.
pub fn write_pcap(
    out: &mut impl io::Write,
    linktype: u32,
    frames: &[(Timestamp, Vec<u8>)],
) -> io::Result<()> {
    let mut writer = PcapWriter::new(out, linktype)?;
    for (ts, data) in frames {
        writer.frame(*ts, data)?;
    }
    Ok(())
}

/// A pcap file written one frame at a time, for captures too large to
/// hold in memory (microsecond, little-endian).
pub struct PcapWriter<W: io::Write> {
    out: W,
}

impl<W: io::Write> PcapWriter<W> {
    /// Writes the file header.
    pub fn new(mut out: W, linktype: u32) -> io::Result<Self> {
        out.write_all(&0xa1b2_c3d4u32.to_le_bytes())?;
        out.write_all(&2u16.to_le_bytes())?;
        out.write_all(&4u16.to_le_bytes())?;
        out.write_all(&[0; 8])?;
        out.write_all(&65_535u32.to_le_bytes())?;
        out.write_all(&linktype.to_le_bytes())?;
        Ok(Self { out })
    }

    /// Writes one frame, captured whole.
    pub fn frame(&mut self, ts: Timestamp, data: &[u8]) -> io::Result<()> {
        let len = u32::try_from(data.len()).map_err(|_| io::Error::other("frame too large"))?;
        let secs = u32::try_from(ts.secs()).map_err(|_| io::Error::other("timestamp too large"))?;
        self.out.write_all(&secs.to_le_bytes())?;
        self.out.write_all(&ts.subsec_micros().to_le_bytes())?;
        self.out.write_all(&len.to_le_bytes())?;
        self.out.write_all(&len.to_le_bytes())?;
        self.out.write_all(data)
    }

    /// Flushes and returns the writer.
    pub fn finish(mut self) -> io::Result<W> {
        self.out.flush()?;
        Ok(self.out)
    }
}

#[cfg(test)]
mod tests;
