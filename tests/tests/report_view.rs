//! The report as a person sees it: the HTML reports the VM tests made of
//! real sessions (`HCP_REPORTS`, set by `cargo xtask test` after the VM
//! tests), rendered by headless Chromium.

use std::path::{Path, PathBuf};
use std::process::Command;

/// Headless Chromium on a local file, with nothing reaching the network.
fn chromium(html: &Path, args: &[&str]) -> std::process::Output {
    let profile = hcp_tests::temp_dir("chromium-profile");
    Command::new("chromium")
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--enable-logging=stderr",
            "--v=0",
            &format!("--user-data-dir={}", profile.display()),
        ])
        .args(args)
        .arg(format!("file://{}", html.display()))
        .output()
        .expect("run chromium (cargo xtask setup installs it)")
}

fn reports() -> Vec<PathBuf> {
    let list = std::env::var("HCP_REPORTS").expect("HCP_REPORTS: the reports the VM tests made");
    let paths: Vec<PathBuf> = std::env::split_paths(&list).collect();
    assert!(!paths.is_empty(), "no report to render");
    paths
}

#[test]
#[ignore = "renders the reports the VM tests made: `cargo xtask test` runs it after them"]
fn reports_render_in_chromium_with_their_plots_and_no_errors() {
    for html in reports() {
        let shown = html.display();
        let dom = chromium(&html, &["--dump-dom"]);
        assert!(dom.status.success(), "{shown}: chromium failed: {}", String::from_utf8_lossy(&dom.stderr));
        let text = String::from_utf8_lossy(&dom.stdout);
        let log = String::from_utf8_lossy(&dom.stderr);
        assert!(!log.contains("CONSOLE") && !log.contains("Uncaught"), "{shown}: console messages: {log}");
        // Five plots, each with data drawn in it.
        let plots: Vec<&str> = text.split("<svg").skip(1).collect();
        assert_eq!(plots.len(), 5, "{shown}: five plots");
        for (i, plot) in plots.iter().enumerate() {
            let plot = &plot[..plot.find("</svg>").expect("closed")];
            let drawn =
                plot.matches("<polyline").filter(|p| p.contains("points=\"") && !p.contains("points=\"\"")).count()
                    + plot.matches("<polygon").count()
                    + plot.matches("<rect").count().saturating_sub(1); // the background
            assert!(drawn >= 1, "{shown}: plot {i} has no data drawn: {plot}");
            assert!(plot.matches("<text").count() >= 4, "{shown}: plot {i} has no axis labels");
        }
        for label in [
            "write latency, µs (log scale)",
            "% of writes at or below",
            "seconds since the snapshot",
            "store used, MiB",
            "milliseconds from the start of FIFREEZE",
            "How large must the store be?",
        ] {
            assert!(text.contains(label), "{shown}: no {label:?}");
        }
        // And as a picture.
        let png = html.with_extension("png");
        let shot = chromium(&html, &[&format!("--screenshot={}", png.display()), "--window-size=1280,2600"]);
        assert!(shot.status.success(), "{shown}: {}", String::from_utf8_lossy(&shot.stderr));
        let bytes = std::fs::read(&png).expect("a screenshot");
        assert!(
            bytes.starts_with(b"\x89PNG") && bytes.len() > 20_000,
            "{shown}: a real picture ({} bytes)",
            bytes.len()
        );
    }
}
