//! `replay --report`: the HTML page in a real browser (Debian's chromium,
//! headless), and its bounds for a capture of ten thousand sources.

use std::net::IpAddr;
use std::path::Path;
use std::process::Command;

use portcloak::runtime::replay::{self, DRAWN, TABLED};
use portcloak::{Config, Engine};

use crate::util::{fixture, portcloak, prerequisites, text};

/// Headless chromium as the README says to run it, with a profile of its own.
fn chromium(profile: &Path, args: &[&str]) -> std::process::Output {
    Command::new("timeout")
        .args(["120", "chromium", "--headless", "--no-sandbox", "--disable-gpu"])
        .args(["--disable-background-networking", "--disable-component-update", "--no-first-run"])
        .args(["--disable-sync", "--disable-quic"])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(args)
        .output()
        .expect("run chromium")
}

/// Loads the report of a connect scan in chromium: the banned source's row
/// is there, its ban marker carries the ban's time and is drawn where the
/// time axis puts that time; and a screenshot is taken.
#[test]
fn the_report_shows_the_banned_source_with_its_ban_at_the_right_time_in_a_browser() {
    if !prerequisites("the report test", &["chromium", "timeout"]) {
        return;
    }
    let dir = std::env::temp_dir().join(format!("portcloak-report-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("temp dir");
    let html = dir.join("report.html");
    let capture = fixture("nmap-sT");
    let out = portcloak(&[
        "replay",
        "--report",
        html.to_str().expect("path"),
        capture.to_str().expect("path"),
    ]);
    assert!(out.status.success(), "{:?}", text(&out));
    let page = std::fs::read_to_string(&html).expect("report");
    // Self-contained: nothing to fetch, nothing to run.
    for banned in ["<script", " src=", "<link", "url(", "@import", "http:", "https:"] {
        assert!(!page.contains(banned), "the page holds {banned}");
    }
    // The ban as replay itself reports it.
    let engine = Engine::new(Config::default());
    let report =
        replay::run(&engine, &[capture], &replay::Options::default(), &mut std::io::sink())
            .expect("replay");
    let scanner: IpAddr = "198.18.1.2".parse().expect("address");
    let ban = report.source(scanner, &engine).and_then(|s| s.ban).expect("the scanner's ban");

    // A copy with a script that measures the page as chromium lays it out
    // (the page's own policy forbids scripts, so the copy drops it).
    let start = page.find("<meta http-equiv=\"Content-Security-Policy\"").expect("policy");
    let end = start + page[start..].find('>').expect("meta end") + 1;
    let probe = r#"<script>
const out = [];
const art = document.querySelector('article.source[data-source="198.18.1.2"]');
out.push('row=' + (art ? 'yes' : 'no'));
if (art) {
  const svg = art.querySelector('svg.trail');
  const line = svg.querySelector('line.ban-marker');
  const t0 = +svg.dataset.t0, t1 = +svg.dataset.t1, x0 = +svg.dataset.x0, x1 = +svg.dataset.x1;
  const ts = +line.dataset.ts;
  const r = svg.getBoundingClientRect(), l = line.getBoundingClientRect();
  const scale = r.width / svg.viewBox.baseVal.width;
  out.push('ban_ts=' + ts);
  out.push('want_px=' + (r.left + (x0 + (ts - t0) / (t1 - t0) * (x1 - x0)) * scale).toFixed(2));
  out.push('got_px=' + (l.left + l.width / 2).toFixed(2));
  out.push('inside=' + (ts >= t0 && ts <= t1));
  out.push('points=' + art.querySelectorAll('svg.trail path').length);
}
document.body.insertAdjacentHTML('beforeend', '<pre id="result">' + out.join(' ') + '</pre>');
</script></body>"#;
    let checked = format!("{}{}", &page[..start], &page[end..]).replace("</body>", probe);
    let check = dir.join("check.html");
    std::fs::write(&check, checked).expect("write check page");
    let profile = dir.join("profile");
    let url = format!("file://{}", check.display());
    let dom = chromium(&profile, &["--window-size=1000,1200", "--dump-dom", &url]);
    let dom = String::from_utf8_lossy(&dom.stdout).into_owned();
    // The last: the script's own text names the element too.
    let result = dom
        .rsplit("<pre id=\"result\">")
        .next()
        .filter(|_| dom.matches("<pre id=\"result\">").count() >= 2)
        .and_then(|r| r.split("</pre>").next())
        .unwrap_or_else(|| panic!("no result in the DOM: {dom}"));
    let field = |name: &str| {
        result
            .split(' ')
            .find_map(|kv| kv.strip_prefix(&format!("{name}=")))
            .unwrap_or_else(|| panic!("{name} missing: {result}"))
            .to_owned()
    };
    assert_eq!(field("row"), "yes", "{result}");
    assert_eq!(field("ban_ts"), ban.since.micros().to_string(), "the marker's time is the ban's");
    assert_eq!(field("inside"), "true", "{result}");
    let (want, got): (f64, f64) =
        (field("want_px").parse().expect("want"), field("got_px").parse().expect("got"));
    assert!((want - got).abs() < 1.5, "the marker is drawn at {got}px, its time is at {want}px");
    assert!(field("points").parse::<u32>().expect("points") >= 2, "{result}");

    // The screenshot a person would look at.
    let png = dir.join("report.png");
    let shot = chromium(
        &profile,
        &[
            "--window-size=1000,1250",
            &format!("--screenshot={}", png.display()),
            &format!("file://{}", html.display()),
        ],
    );
    let bytes = std::fs::read(&png).unwrap_or_else(|e| panic!("no screenshot ({e}): {shot:?}"));
    assert!(bytes.starts_with(b"\x89PNG") && bytes.len() > 20_000, "{} bytes", bytes.len());
    std::fs::remove_dir_all(&dir).expect("clean up");
}

/// Ten thousand sources, each banned or dropped: the page draws the top
/// [`DRAWN`], tables at most [`TABLED`] more, counts the rest, and stays
/// small.
#[test]
fn the_report_of_ten_thousand_sources_stays_readable() {
    use portcloak::Timestamp;
    use portcloak::io::pcap::PcapWriter;
    use portcloak::wire::TcpFlags;
    use portcloak::wire::craft::Craft;

    let dir = std::env::temp_dir().join(format!("portcloak-report-big-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let path = dir.join("many.pcap");
    let mut pcap =
        PcapWriter::new(std::fs::File::create(&path).expect("create"), 101).expect("header");
    let server: IpAddr = "198.18.1.1".parse().expect("address");
    let mut t = 1_700_000_000_000_000u64;
    for i in 0..10_000u32 {
        let src = IpAddr::from((0xc612_8000u32 + i).to_be_bytes());
        // Seven closed ports each: a closed-ports ban for every source.
        for port in 1..=7u16 {
            let syn = Craft::tcp(src, server, 40_000, port * 100 + (i % 97) as u16, TcpFlags::SYN)
                .window(64_240)
                .options(&[2, 4, 5, 180, 4, 2, 1, 3, 3, 7])
                .build();
            t += 1_000;
            pcap.frame(Timestamp::from_micros(t), &syn).expect("frame");
        }
    }
    pcap.finish().expect("flush");
    let html = dir.join("many.html");
    let out = portcloak(&[
        "replay",
        "--local",
        "198.18.1.1",
        "--report",
        html.to_str().expect("path"),
        path.to_str().expect("path"),
    ]);
    assert!(out.status.success(), "{:?}", text(&out));
    let page = std::fs::read_to_string(&html).expect("report");
    std::fs::remove_dir_all(&dir).expect("clean up");
    let drawn = page.matches("<article class=\"source\"").count();
    assert_eq!(drawn, DRAWN, "the busiest banned sources are drawn");
    let tabled = page.matches("<tr data-source=").count();
    assert!(tabled <= 2 * TABLED, "{tabled} rows");
    assert!(page.contains("more, not drawn"), "the rest are tabled");
    assert!(page.contains("class=\"muted summary\""), "and what no table holds is counted");
    assert!(page.len() < 8 << 20, "{} bytes", page.len());
}
