//! `replay --report FILE.html`: one self-contained page to look at, with
//! inline SVG and CSS, no script and nothing fetched (its content security
//! policy forbids both). It shows the capture's packets over time by
//! verdict, what replay decided about checksums, drops by reason, and for
//! each banned source a picture of its probes over time (port up, time
//! across) with the moment of its ban marked, its scanner and scan kinds,
//! and what was answered before the ban. Top sources come first, so the
//! page stays readable for ten thousand: the rest are tabled, then counted.

use std::fmt::Write as _;
use std::io::Write;
use std::path::PathBuf;

use super::report::{Fate, Report, SourceReport, counts, scanner_name};
use crate::classify::ProbeKind;
use crate::time::Timestamp;
use crate::track::{BanKind, SourceKey};

/// Banned sources drawn in full, the busiest first.
pub const DRAWN: usize = 100;
/// Sources listed in a table after those, per table.
pub const TABLED: usize = 500;

/// Width of the plots, in SVG units.
const W: f64 = 960.0;
/// Left margin for the axis labels.
const X0: f64 = 60.0;
/// Right end of the plot area.
const X1: f64 = W - 10.0;

const STYLE: &str = "
body{font:14px/1.45 system-ui,sans-serif;margin:24px auto;max-width:1000px;color:#1d2330;background:#fff}
h1{font-size:22px;margin:0 0 4px}h2{font-size:17px;margin:28px 0 8px;border-bottom:1px solid #dde}
h3{font-size:15px;margin:0 0 2px;font-family:ui-monospace,monospace}
dl{display:grid;grid-template-columns:max-content 1fr;gap:2px 14px;margin:8px 0}dt{color:#667}dd{margin:0}
table{border-collapse:collapse;width:100%;font-size:13px}td,th{padding:3px 8px;border-bottom:1px solid #eef;text-align:left}
th{color:#667;font-weight:600}.n{text-align:right;font-variant-numeric:tabular-nums}
article.source{margin:14px 0 22px;padding:10px 12px;border:1px solid #e3e6ee;border-radius:6px}
article.source p{margin:2px 0;color:#333}.reason{color:#b3261e;font-weight:600}
svg{display:block;width:100%;height:auto}svg text{font:11px system-ui,sans-serif;fill:#556}
.accepted{fill:#3b7dd8}.dropped{fill:#d8453b}.answered{fill:#2e9e4f}.axis{stroke:#aab;stroke-width:1}
.grid{stroke:#eef;stroke-width:1}.ban-marker{stroke:#111;stroke-width:2;stroke-dasharray:5 3}
.legend span{display:inline-block;margin-right:14px}.legend i{display:inline-block;width:10px;height:10px;margin-right:4px;vertical-align:-1px}
.muted{color:#667}
";

/// Writes the report of `files` as one HTML page.
pub fn write_html(out: &mut dyn Write, files: &[PathBuf], report: &Report) -> std::io::Result<()> {
    let mut page = String::with_capacity(1 << 16);
    page_html(&mut page, files, report);
    out.write_all(page.as_bytes())
}

fn page_html(p: &mut String, files: &[PathBuf], report: &Report) {
    let names: Vec<String> = files.iter().map(|f| f.display().to_string()).collect();
    let title = esc(&names.join(", "));
    let _ = write!(
        p,
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; style-src 'unsafe-inline'\">\
         <meta name=\"viewport\" content=\"width=device-width\">\
         <title>portcloak replay: {title}</title><style>{STYLE}</style></head><body>\
         <header><h1>portcloak replay</h1><dl>"
    );
    fact(p, "captures", &title);
    let local =
        if report.local.is_empty() { "(none found)".to_owned() } else { report.local.join(", ") };
    fact(p, "local", &esc(&local));
    let (t0, t1) = report.span.unwrap_or((Timestamp::ZERO, Timestamp::ZERO));
    fact(p, "span", &format!("{t0} .. {t1} ({:.3} s)", t1.saturating_since(t0).as_secs_f64()));
    fact(
        p,
        "packets",
        &format!(
            "{} frames: {} inbound, {} outbound, {} not IP, {} replies suppressed",
            report.frames,
            report.inbound,
            report.outbound,
            report.not_ip,
            report.replies_suppressed
        ),
    );
    fact(p, "verdicts", &format!("accept {}, drop {}", report.accepted, report.dropped));
    let banned =
        report.sources.values().filter(|s| s.ban.is_some()).count() as u64 + report.others.banned;
    fact(
        p,
        "banned",
        &format!(
            "{banned} sources, {} bans in all",
            report.bans.len() as u64 + report.bans_unlisted
        ),
    );
    p.push_str("</dl></header>");
    checksums_html(p, report);
    timeline_html(p, report);
    drops_html(p, report);
    banned_html(p, report, (t0, t1));
    others_html(p, report);
    p.push_str("</body></html>\n");
}

fn fact(p: &mut String, name: &str, value: &str) {
    let _ = write!(p, "<dt>{name}</dt><dd>{value}</dd>");
}

fn checksums_html(p: &mut String, report: &Report) {
    p.push_str(
        "<section id=\"checksums\"><h2>Checksums</h2><table><tr><th>capture</th><th>asked</th>\
         <th>decided</th><th class=\"n\">sampled</th><th class=\"n\">left for the NIC</th>\
         <th class=\"n\">wrong</th><th class=\"n\">accepted as left for the NIC</th></tr>",
    );
    for c in &report.checksums {
        let s = c.sample;
        let _ = write!(
            p,
            "<tr class=\"checksums\" data-decided=\"{d}\"><td>{}</td><td>{}</td><td>{d}</td>\
             <td class=\"n\">{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td></tr>",
            esc(&c.file),
            c.mode.name(),
            s.sampled,
            s.partial,
            s.bad,
            c.partial_accepted,
            d = c.decided.name(),
        );
    }
    p.push_str(
        "</table><p class=\"muted\">offload: checksums a kernel left for the NIC (checksum offload \
         at the capture point) are accepted, wrong ones dropped; verify: every one must be right; \
         off: none checked.</p></section>",
    );
}

fn timeline_html(p: &mut String, report: &Report) {
    let t = &report.timeline;
    let width_ms = t.width_ms.max(1);
    let rate = |n: u64| n as f64 * 1000.0 / width_ms as f64;
    let top = t.bins.iter().map(|(a, d)| rate(a + d)).fold(0.0, f64::max).max(1.0);
    let top = nice(top);
    let (h, y0, y1) = (220.0, 10.0, 190.0);
    let _ = write!(
        p,
        "<section id=\"timeline\"><h2>Packets over time</h2>\
         <svg viewBox=\"0 0 {W} {h}\" role=\"img\" aria-label=\"packets per second by verdict\">"
    );
    axis_y(p, (y0, y1), top, "/s");
    let n = t.bins.len().max(1) as f64;
    let bw = (X1 - X0) / n;
    for (i, (acc, drop)) in t.bins.iter().enumerate() {
        let x = X0 + i as f64 * bw;
        let ha = rate(*acc) / top * (y1 - y0);
        let hd = rate(*drop) / top * (y1 - y0);
        if hd > 0.0 {
            let _ = write!(
                p,
                "<rect class=\"dropped\" x=\"{x:.2}\" y=\"{:.2}\" width=\"{:.2}\" height=\"{hd:.2}\"/>",
                y1 - hd,
                bw.max(0.5)
            );
        }
        if ha > 0.0 {
            let _ = write!(
                p,
                "<rect class=\"accepted\" x=\"{x:.2}\" y=\"{:.2}\" width=\"{:.2}\" height=\"{ha:.2}\"/>",
                y1 - hd - ha,
                bw.max(0.5)
            );
        }
    }
    let span = (t.bins.len() as u64 * width_ms) as f64 / 1000.0;
    let _ = write!(
        p,
        "<line class=\"axis\" x1=\"{X0}\" y1=\"{y1}\" x2=\"{X1}\" y2=\"{y1}\"/>\
         <text x=\"{X0}\" y=\"{}\">+0 s</text><text x=\"{X1}\" y=\"{}\" text-anchor=\"end\">+{span:.3} s</text></svg>\
         <p class=\"legend\"><span><i class=\"accepted\" style=\"background:#3b7dd8\"></i>accepted</span>\
         <span><i style=\"background:#d8453b\"></i>dropped</span> {:.3} s per bar</p></section>",
        y1 + 16.0,
        y1 + 16.0,
        width_ms as f64 / 1000.0
    );
}

fn drops_html(p: &mut String, report: &Report) {
    p.push_str("<section id=\"drops\"><h2>Drops by reason</h2>");
    if report.drops.is_empty() {
        p.push_str("<p class=\"muted\">Nothing was dropped.</p></section>");
        return;
    }
    let mut drops: Vec<_> = report.drops.iter().collect();
    drops.sort_by_key(|(r, n)| (std::cmp::Reverse(**n), r.name()));
    let top = drops.first().map_or(1, |(_, n)| **n).max(1) as f64;
    let row = 22.0;
    let h = row * drops.len() as f64 + 6.0;
    let _ = write!(p, "<svg viewBox=\"0 0 {W} {h}\" role=\"img\" aria-label=\"drops by reason\">");
    for (i, (reason, n)) in drops.iter().enumerate() {
        let y = 3.0 + i as f64 * row;
        let len = (**n as f64 / top) * (X1 - 180.0 - 60.0);
        let _ = write!(
            p,
            "<g class=\"drop\" data-reason=\"{r}\" data-count=\"{n}\"><text x=\"170\" y=\"{:.1}\" text-anchor=\"end\">{r}</text>\
             <rect class=\"dropped\" x=\"180\" y=\"{y:.1}\" width=\"{len:.1}\" height=\"{:.1}\"/>\
             <text x=\"{:.1}\" y=\"{:.1}\">{n}</text></g>",
            y + 14.0,
            row - 6.0,
            184.0 + len,
            y + 14.0,
            r = reason.name(),
        );
    }
    p.push_str("</svg></section>");
}

fn banned_html(p: &mut String, report: &Report, span: (Timestamp, Timestamp)) {
    let mut banned: Vec<(&SourceKey, &SourceReport)> =
        report.sources.iter().filter(|(_, s)| s.ban.is_some()).collect();
    banned.sort_by_key(|(k, s)| (std::cmp::Reverse(s.packets), **k));
    let _ = write!(p, "<section id=\"banned\"><h2>Banned sources ({})</h2>", banned.len());
    if banned.is_empty() {
        p.push_str("<p class=\"muted\">No source was banned.</p>");
    }
    for (key, s) in banned.iter().take(DRAWN) {
        source_html(p, **key, s, span.0);
    }
    let rest = banned.get(DRAWN..).unwrap_or_default();
    if !rest.is_empty() {
        let _ = write!(p, "<h3 class=\"muted\">{} more, not drawn</h3>", rest.len());
        source_table(p, rest.iter().take(TABLED).copied());
        summary(p, rest.get(TABLED..).unwrap_or_default());
    }
    if report.others.banned > 0 {
        let _ = write!(
            p,
            "<p class=\"muted\">And {} banned sources the report did not keep in full.</p>",
            report.others.banned
        );
    }
    p.push_str("</section>");
}

/// One banned source: what it is, and its probes over its own time in the
/// capture (`start` is the capture's).
fn source_html(p: &mut String, key: SourceKey, s: &SourceReport, start: Timestamp) {
    let Some(ban) = s.ban else { return };
    // From its first point to its last, the ban included, with a margin.
    let first = s.trail.iter().map(|t| t.at).min().unwrap_or(ban.since).min(ban.since);
    let last = s.trail.iter().map(|t| t.at).max().unwrap_or(ban.since).max(ban.since);
    let margin = last.saturating_since(first) / 50 + std::time::Duration::from_millis(1);
    let t0 = Timestamp::from_micros(first.micros().saturating_sub(margin.as_micros() as u64));
    let t1 = last.saturating_add(margin);
    let what = match ban.kind {
        BanKind::Ban => "banned",
        BanKind::Quarantine => "quarantined",
    };
    let answered_before =
        s.trail.iter().filter(|t| t.fate == Fate::Answered && t.at < ban.since).count();
    let _ = write!(
        p,
        "<article class=\"source\" data-source=\"{key}\" data-ban=\"{}\"><h3>{key} \
         <span class=\"reason\">{what}: {}</span></h3>\
         <p>{} at +{:.3} s, for {}, offence {}</p><p>scanner: {}</p><p>scan kinds: {}</p>\
         <p>{} packets, {}{} ports probed, {} dropped; {} replies answered it ({} drawn before the ban), {} accepted while banned</p>",
        ban.since.micros(),
        esc(&ban.reason.to_string()),
        what,
        ban.since.saturating_since(start).as_secs_f64(),
        crate::time::format_duration(ban.until.saturating_since(ban.since)),
        ban.offences,
        esc(&scanner_name(s)),
        counts(&s.kinds, ProbeKind::name),
        s.packets,
        if s.ports_capped { "at least " } else { "" },
        s.ports,
        s.dropped,
        s.answered,
        answered_before,
        s.accepted_while_banned,
    );
    let (h, y0, y1) = (170.0, 8.0, 140.0);
    // Ports on a log scale: scans crowd the low ones.
    let top_port = s.trail.iter().map(|t| t.port).max().unwrap_or(1).max(10);
    let decades = f64::from(top_port).log10().ceil();
    let (a, b) = (t0.micros() as f64, t1.micros().max(t0.micros() + 1) as f64);
    let x = |t: Timestamp| X0 + (t.micros() as f64 - a) / (b - a) * (X1 - X0);
    let y = |port: u16| y1 - (f64::from(port) + 1.0).log10() / decades * (y1 - y0);
    let _ = write!(
        p,
        "<svg class=\"trail\" viewBox=\"0 0 {W} {h}\" data-t0=\"{}\" data-t1=\"{}\" data-x0=\"{X0}\" \
         data-x1=\"{X1}\" role=\"img\" aria-label=\"probes of {key} over time\">",
        t0.micros(),
        t1.micros()
    );
    let mut port = 1u32;
    for _ in 0..=decades as u32 {
        let yy = y(u16::try_from(port).unwrap_or(u16::MAX));
        let _ = write!(
            p,
            "<line class=\"grid\" x1=\"{X0}\" y1=\"{yy:.1}\" x2=\"{X1}\" y2=\"{yy:.1}\"/>\
             <text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\">{}</text>",
            X0 - 6.0,
            yy + 4.0,
            short(f64::from(port))
        );
        port *= 10;
    }
    for fate in [Fate::Accepted, Fate::Dropped, Fate::Answered] {
        let mut d = String::new();
        for t in s.trail.iter().filter(|t| t.fate == fate) {
            let _ = write!(d, "M{:.1} {:.1}h3v3h-3z", x(t.at) - 1.5, y(t.port) - 1.5);
        }
        if !d.is_empty() {
            let class = match fate {
                Fate::Accepted => "accepted",
                Fate::Dropped => "dropped",
                Fate::Answered => "answered",
            };
            let _ = write!(p, "<path class=\"{class}\" d=\"{d}\"/>");
        }
    }
    let bx = x(ban.since);
    let (lx, anchor) = if bx > X1 - 90.0 { (bx - 4.0, "end") } else { (bx + 4.0, "start") };
    let _ = write!(
        p,
        "<line class=\"axis\" x1=\"{X0}\" y1=\"{y1}\" x2=\"{X1}\" y2=\"{y1}\"/>\
         <line class=\"ban-marker\" data-ts=\"{}\" x1=\"{bx:.2}\" y1=\"{y0}\" x2=\"{bx:.2}\" y2=\"{y1}\"/>\
         <text x=\"{lx:.1}\" y=\"{}\" text-anchor=\"{anchor}\">{what}</text>\
         <text x=\"{X0}\" y=\"{}\">+{:.3} s</text><text x=\"{X1}\" y=\"{}\" text-anchor=\"end\">+{:.3} s</text>\
         <text x=\"4\" y=\"{}\">port</text></svg>\
         <p class=\"legend\"><span><i style=\"background:#d8453b\"></i>dropped</span>\
         <span><i style=\"background:#3b7dd8\"></i>accepted</span>\
         <span><i style=\"background:#2e9e4f\"></i>answered (the host's reply)</span></p></article>",
        ban.since.micros(),
        y0 + 10.0,
        y1 + 16.0,
        t0.saturating_since(start).as_secs_f64(),
        y1 + 16.0,
        t1.saturating_since(start).as_secs_f64(),
        y1 + 16.0,
    );
}

fn others_html(p: &mut String, report: &Report) {
    let mut rest: Vec<(&SourceKey, &SourceReport)> =
        report.sources.iter().filter(|(_, s)| s.ban.is_none()).collect();
    rest.sort_by_key(|(k, s)| (std::cmp::Reverse(s.packets), **k));
    let _ = write!(p, "<section id=\"sources\"><h2>Sources not banned ({})</h2>", rest.len());
    source_table(p, rest.iter().take(TABLED).copied());
    summary(p, rest.get(TABLED..).unwrap_or_default());
    let o = &report.others;
    if o.sources > 0 {
        let _ = write!(
            p,
            "<p class=\"muted\">Beyond the report's {} sources kept in full: {} more, {} packets, \
             {} dropped, {} answered.</p>",
            super::REPORTED,
            o.sources,
            o.packets,
            o.dropped,
            o.answered
        );
    }
    p.push_str("</section>");
}

/// One line for the sources a table left out.
fn summary(p: &mut String, more: &[(&SourceKey, &SourceReport)]) {
    if more.is_empty() {
        return;
    }
    let packets: u64 = more.iter().map(|(_, s)| s.packets).sum();
    let dropped: u64 = more.iter().map(|(_, s)| s.dropped).sum();
    let _ = write!(
        p,
        "<p class=\"muted summary\">{} more: {packets} packets, {dropped} dropped.</p>",
        more.len()
    );
}

fn source_table<'a>(p: &mut String, rows: impl Iterator<Item = (&'a SourceKey, &'a SourceReport)>) {
    p.push_str(
        "<table><tr><th>source</th><th class=\"n\">packets</th><th class=\"n\">dropped</th>\
         <th class=\"n\">ports</th><th class=\"n\">answered</th><th>ban</th></tr>",
    );
    for (key, s) in rows {
        let ban = s.ban.map(|b| esc(&b.reason.to_string())).unwrap_or_default();
        let _ = write!(
            p,
            "<tr data-source=\"{key}\"><td>{key}</td><td class=\"n\">{}</td><td class=\"n\">{}</td>\
             <td class=\"n\">{}</td><td class=\"n\">{}</td><td>{ban}</td></tr>",
            s.packets, s.dropped, s.ports, s.answered
        );
    }
    p.push_str("</table>");
}

/// The y axis from 0 to `top`, with four grid lines.
fn axis_y(p: &mut String, (y0, y1): (f64, f64), top: f64, unit: &str) {
    for i in 0..=4 {
        let v = top * f64::from(i) / 4.0;
        let y = y1 - (y1 - y0) * f64::from(i) / 4.0;
        let _ = write!(
            p,
            "<line class=\"grid\" x1=\"{X0}\" y1=\"{y:.1}\" x2=\"{X1}\" y2=\"{y:.1}\"/>\
             <text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\">{}{unit}</text>",
            X0 - 6.0,
            y + 4.0,
            short(v)
        );
    }
}

/// A round number at least `v`: 1, 2 or 5 times a power of ten.
fn nice(v: f64) -> f64 {
    let mag = 10f64.powf(v.max(1.0).log10().floor());
    [1.0, 2.0, 5.0, 10.0].iter().map(|m| m * mag).find(|c| *c >= v).unwrap_or(10.0 * mag)
}

fn short(v: f64) -> String {
    if v >= 1e6 {
        format!("{:.1}M", v / 1e6)
    } else if v >= 1e4 {
        format!("{:.0}k", v / 1e3)
    } else if v.fract() == 0.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.1}")
    }
}

/// Escapes text for HTML.
fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_is_escaped_and_scales_are_round() {
        assert_eq!(esc("<a href=\"x\">&'"), "&lt;a href=&quot;x&quot;&gt;&amp;&#39;");
        assert_eq!((nice(7.0), nice(13.0), nice(200.0), nice(0.2)), (10.0, 20.0, 200.0, 1.0));
    }
}
