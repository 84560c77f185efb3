//! A streaming reader of pcap and pcapng captures, from a file or a pipe,
//! and a pcap writer.
//!
//! The formats are parsed by `pcap-parser` (the Rusticata project's, kept
//! and fuzzed): pcap in either byte order, in microseconds or nanoseconds,
//! and the "modified" pcap of old Red Hat tcpdumps; pcapng with any number
//! of sections and interfaces, enhanced and simple packet blocks,
//! per-interface link types, timestamp resolutions (`if_tsresol`) and
//! offsets (`if_tsoffset`), and frame check sequences (`if_fcslen`, and
//! the FCS bits of a pcap link type), which are cut off. Frames are lent
//! from one reused buffer; a capture of any size is read in constant
//! memory.

use std::fs::File;
use std::io::{self, Read};
use std::path::{Path, PathBuf};

use pcap_parser::nom;
use pcap_parser::pcapng::{SHB_MAGIC, parse_block_be, parse_block_le};
use pcap_parser::{
    LegacyPcapBlock, PcapError, parse_pcap_frame, parse_pcap_frame_be, parse_pcap_frame_modified,
    parse_pcap_header,
};
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

/// Bytes read from the input at a time.
const CHUNK: usize = 1 << 16;

/// The pcapng `if_fcslen` option.
const IF_FCSLEN: u16 = 13;

#[derive(Clone, Copy, Debug)]
enum Format {
    Pcap { big_endian: bool, nanos: bool, modified: bool, linktype: u32, fcs: usize },
    PcapNg { big_endian: bool },
}

#[derive(Clone, Copy, Debug)]
struct Interface {
    linktype: u32,
    /// Timestamp units per second.
    units_per_sec: u64,
    /// Seconds added to every timestamp (`if_tsoffset`).
    offset_s: i64,
    /// Bytes of frame check sequence at the end of each frame (`if_fcslen`).
    fcs: usize,
}

/// A pcap-parser function: the bytes left and what it parsed from the front.
type Parser<'b, T> = fn(&'b [u8]) -> nom::IResult<&'b [u8], T, PcapError<&'b [u8]>>;

/// pcap-parser's parsers of one legacy record and of one pcapng block.
type LegacyParser =
    for<'a> fn(&'a [u8]) -> nom::IResult<&'a [u8], LegacyPcapBlock<'a>, PcapError<&'a [u8]>>;
/// See [`LegacyParser`].
type BlockParser =
    for<'a> fn(
        &'a [u8],
    ) -> nom::IResult<&'a [u8], pcap_parser::pcapng::Block<'a>, PcapError<&'a [u8]>>;

/// What one parsed block or record says, as plain values, so the buffer
/// it was parsed from can move on before the frame is lent out.
enum Block {
    Frame { ts: Timestamp, linktype: u32, at: usize, len: usize, orig_len: usize },
    Section { big_endian: bool },
    Interface(Interface),
    Other,
}

/// A capture opened for reading: a file, or any byte stream (standard
/// input). The pcap and pcapng formats are parsed by the `pcap-parser`
/// crate (Rusticata's, fuzzed in OSS-Fuzz); this reader owns the buffer,
/// so each frame is lent straight from the bytes read, never copied.
pub struct PcapReader {
    path: PathBuf,
    input: Box<dyn Read + Send>,
    buf: Vec<u8>,
    /// The unparsed bytes are `buf[start..end]`.
    start: usize,
    end: usize,
    eof: bool,
    count: u64,
    format: Format,
    interfaces: Vec<Interface>,
    last_ts: Timestamp,
}

impl PcapReader {
    /// Opens `path` and reads its file header.
    pub fn open(path: &Path) -> Result<Self, SourceError> {
        let file =
            File::open(path).map_err(|source| SourceError::Io { path: path.to_owned(), source })?;
        Self::from_reader(path, Box::new(file))
    }

    /// Reads a capture from `input` (standard input, a pipe), named `name`
    /// in errors.
    pub fn from_reader(name: &Path, input: Box<dyn Read + Send>) -> Result<Self, SourceError> {
        let mut reader = Self {
            path: name.to_owned(),
            input,
            buf: vec![0; CHUNK],
            start: 0,
            end: 0,
            eof: false,
            count: 0,
            format: Format::PcapNg { big_endian: false },
            interfaces: Vec::new(),
            last_ts: Timestamp::ZERO,
        };
        reader.refill(4)?;
        if reader.end == 0 {
            return Err(reader.format_error("file is empty or shorter than a capture header"));
        }
        let magic = reader.buf.get(..4).and_then(|m| <[u8; 4]>::try_from(m).ok());
        let magic = magic.map(u32::from_le_bytes);
        if magic == Some(SHB_MAGIC) {
            // The section header is parsed as the first block.
            return Ok(reader);
        }
        // Microseconds and nanoseconds in either byte order, and the
        // little-endian "modified" format (pcap-parser reads no other).
        let is_pcap = matches!(
            magic,
            Some(0xa1b2_c3d4 | 0xd4c3_b2a1 | 0xa1b2_3c4d | 0x4d3c_b2a1 | 0xa1b2_cd34)
        );
        if !is_pcap {
            return Err(reader.format_error("not a pcap or pcapng file (unknown magic number)"));
        }
        reader.refill(24)?;
        let (header, used) = match parse_pcap_header(reader.unparsed()) {
            Ok((rest, h)) => (h, reader.end - reader.start - rest.len()),
            Err(_) => return Err(reader.format_error("truncated pcap file header")),
        };
        reader.start += used;
        // The upper bits say whether frames end in a frame check sequence
        // (bit 26) and how many 16-bit words it has (bits 28-31).
        let network = u32::from_ne_bytes(header.network.0.to_ne_bytes());
        let fcs = if network & 0x0400_0000 != 0 { (network >> 28) as usize * 2 } else { 0 };
        reader.format = Format::Pcap {
            big_endian: header.is_bigendian(),
            nanos: header.is_nanosecond_precision(),
            modified: header.is_modified_format(),
            linktype: network & 0xffff,
            fcs,
        };
        Ok(reader)
    }

    /// Bytes consumed so far, for progress reporting.
    pub fn bytes_read(&self) -> u64 {
        self.count
    }

    /// The next frame, or `None` at the end of the capture.
    pub fn next_frame(&mut self) -> Result<Option<Frame<'_>>, SourceError> {
        loop {
            if self.start == self.end {
                self.refill(1)?;
                if self.start == self.end {
                    return Ok(None);
                }
            }
            let parsed = match self.format {
                Format::Pcap { big_endian, nanos, modified, linktype, fcs } => {
                    let parse: LegacyParser = match (modified, big_endian) {
                        (true, _) => parse_pcap_frame_modified,
                        (false, true) => parse_pcap_frame_be,
                        (false, false) => parse_pcap_frame,
                    };
                    self.parse_in(parse).map(|(used, record)| {
                        (used, legacy_block(&record, self.unparsed(), nanos, linktype, fcs))
                    })
                }
                Format::PcapNg { big_endian } => {
                    let parse: BlockParser =
                        if big_endian { parse_block_be } else { parse_block_le };
                    match self.parse_in(parse) {
                        Ok((used, block)) => ng_block(&block, &self.interfaces, self.last_ts)
                            .map(|b| (used, b))
                            .map_err(Some),
                        // A block replay has no use for (statistics, name
                        // resolution, …) is stepped over even when malformed.
                        Err(Some(_)) if let Some(used) = self.skippable(big_endian) => {
                            Ok((used, Block::Other))
                        }
                        Err(e) => Err(e),
                    }
                }
            };
            let (used, block) = match parsed {
                Ok(done) => done,
                // Incomplete: read more, or end inside a block.
                Err(None) => {
                    let have = self.end - self.start;
                    if have >= MAX_BLOCK {
                        return Err(self.format_error("a block longer than 64 MiB"));
                    }
                    self.refill(have + 1)?;
                    if self.end - self.start == have {
                        return Err(self.format_error("file ends inside a packet"));
                    }
                    continue;
                }
                Err(Some(message)) => return Err(self.format_error(&message)),
            };
            let at = self.start;
            self.start += used;
            match block {
                Block::Frame { ts, linktype, at: data_at, len, orig_len } => {
                    self.last_ts = ts;
                    let data = self.buf.get(at + data_at..at + data_at + len).unwrap_or_default();
                    return Ok(Some(Frame { ts, linktype, data, orig_len }));
                }
                Block::Section { big_endian } => {
                    self.format = Format::PcapNg { big_endian };
                    self.interfaces.clear();
                }
                Block::Interface(i) => self.interfaces.push(i),
                Block::Other => {}
            }
        }
    }

    /// Runs a pcap-parser `parse` on the unparsed bytes: the bytes it used
    /// and what it parsed; `Err(None)` when it needs more bytes.
    fn parse_in<'b, T>(&'b self, parse: Parser<'b, T>) -> Result<(usize, T), Option<String>> {
        let input = self.unparsed();
        match parse(input) {
            Ok((rest, t)) => Ok((input.len() - rest.len(), t)),
            Err(nom::Err::Incomplete(_)) => Err(None),
            Err(nom::Err::Error(e) | nom::Err::Failure(e)) => Err(Some(describe(&e))),
        }
    }

    /// The length of the pcapng block at the front, when it is neither a
    /// section, an interface nor a packet block and lies whole in the
    /// buffer: a block that can be stepped over.
    fn skippable(&self, big_endian: bool) -> Option<usize> {
        let head = self.unparsed().get(..8)?;
        let word = |b: &[u8]| {
            let w = <[u8; 4]>::try_from(b).ok()?;
            Some(if big_endian { u32::from_be_bytes(w) } else { u32::from_le_bytes(w) })
        };
        let (kind, total) = (word(head.get(..4)?)?, word(head.get(4..8)?)? as usize);
        let essential = matches!(kind, SHB_MAGIC | 1 | 3 | 6);
        let whole = total >= 12 && total % 4 == 0 && total <= self.end - self.start;
        (!essential && whole).then_some(total)
    }

    fn unparsed(&self) -> &[u8] {
        self.buf.get(self.start..self.end).unwrap_or_default()
    }

    /// Reads until at least `want` unparsed bytes are buffered or the input
    /// ends, moving the unparsed bytes to the front first.
    fn refill(&mut self, want: usize) -> Result<(), SourceError> {
        if self.eof {
            return Ok(());
        }
        if self.start > 0 {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        if self.buf.len() < want.max(CHUNK) {
            self.buf.resize(want.max(CHUNK).next_power_of_two(), 0);
        }
        while self.end < want {
            let space = self.buf.get_mut(self.end..).unwrap_or_default();
            if space.is_empty() {
                break;
            }
            let n = match self.input.read(space) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(source) => return Err(SourceError::Io { path: self.path.clone(), source }),
            };
            if n == 0 {
                self.eof = true;
                break;
            }
            self.end += n;
            self.count += n as u64;
        }
        Ok(())
    }

    fn format_error(&self, message: &str) -> SourceError {
        SourceError::Format { path: self.path.clone(), message: message.to_owned() }
    }
}

/// Where `inner` starts within `outer`, which holds it.
fn offset(outer: &[u8], inner: &[u8]) -> usize {
    (inner.as_ptr() as usize).saturating_sub(outer.as_ptr() as usize)
}

/// What a legacy pcap record says; `base` holds the record's bytes.
fn legacy_block(
    r: &LegacyPcapBlock<'_>,
    base: &[u8],
    nanos: bool,
    linktype: u32,
    fcs: usize,
) -> Block {
    let frac = u64::from(r.ts_usec);
    let micros = if nanos { frac / 1000 } else { frac };
    let ts = Timestamp::from_micros(
        u64::from(r.ts_sec).saturating_mul(1_000_000).saturating_add(micros),
    );
    let len = r.data.len().min(r.caplen as usize).saturating_sub(fcs);
    let orig_len = (r.origlen as usize).saturating_sub(fcs);
    Block::Frame { ts, linktype, at: offset(base, r.data), len, orig_len }
}

/// What a pcapng block says; `Err` for a packet on an interface never
/// described.
fn ng_block(
    block: &pcap_parser::pcapng::Block<'_>,
    interfaces: &[Interface],
    last_ts: Timestamp,
) -> Result<Block, String> {
    use pcap_parser::pcapng::Block as B;
    Ok(match block {
        B::SectionHeader(shb) => Block::Section { big_endian: shb.big_endian() },
        B::InterfaceDescription(idb) => {
            let fcs = idb
                .options
                .iter()
                .find(|o| o.code.0 == IF_FCSLEN)
                .and_then(|o| o.value.first().copied())
                .map_or(0, usize::from);
            Block::Interface(Interface {
                linktype: u32::from_ne_bytes(idb.linktype.0.to_ne_bytes()),
                units_per_sec: idb.ts_resolution().unwrap_or(1_000_000).max(1),
                offset_s: idb.ts_offset(),
                fcs,
            })
        }
        B::EnhancedPacket(epb) => {
            let iface = usize::try_from(epb.if_id).unwrap_or(usize::MAX);
            let Some(i) = interfaces.get(iface) else {
                return Err(format!("packet on undeclared interface {iface}"));
            };
            let units = (u64::from(epb.ts_high) << 32) | u64::from(epb.ts_low);
            let micros = u128::from(units) * 1_000_000 / u128::from(i.units_per_sec);
            let micros =
                i128::try_from(micros).unwrap_or(i128::MAX) + i128::from(i.offset_s) * 1_000_000;
            let ts = Timestamp::from_micros(u64::try_from(micros.max(0)).unwrap_or(u64::MAX));
            let caplen = (epb.caplen as usize).min(epb.data.len());
            let len = caplen.saturating_sub(i.fcs);
            let orig_len = (epb.origlen as usize).saturating_sub(i.fcs);
            Block::Frame { ts, linktype: i.linktype, at: 28, len, orig_len }
        }
        B::SimplePacket(spb) => {
            let Some(i) = interfaces.first() else {
                return Err("simple packet block before any interface".to_owned());
            };
            // No timestamp of its own: the latest one.
            let caplen = (spb.origlen as usize).min(spb.data.len());
            let len = caplen.saturating_sub(i.fcs);
            let orig_len = (spb.origlen as usize).saturating_sub(i.fcs);
            Block::Frame { ts: last_ts, linktype: i.linktype, at: 12, len, orig_len }
        }
        _ => Block::Other,
    })
}

/// One line for a parse error.
fn describe(e: &PcapError<&[u8]>) -> String {
    match e {
        PcapError::HeaderNotRecognized => "bad pcapng section header".to_owned(),
        PcapError::NomError(_, kind) | PcapError::OwnedNomError(_, kind) => {
            format!("malformed block or record ({kind:?})")
        }
        other => format!("{other}"),
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
