//! What a benchmark measured, in the one shape every part of `cargo xtask
//! bench` reports in: sections of figures (every run kept, with median,
//! min and max) and of ratios measured side by side, with the targets they
//! are held to. Serialised to JSON for machines and rendered as the tables
//! of `bench/RESULTS.md` for people.

use std::fmt::Write as _;

use serde_json::{json, Value};

/// One measured quantity, every run of it.
#[derive(Clone, Debug)]
pub struct Figure {
    /// Short and stable: `stall_ms/hcp_start`.
    pub name: String,
    /// What it counts, in words a reader of the table needs.
    pub what: String,
    pub unit: String,
    pub runs: Vec<f64>,
}

impl Figure {
    pub fn new(name: &str, what: &str, unit: &str) -> Figure {
        Figure { name: name.into(), what: what.into(), unit: unit.into(), runs: Vec::new() }
    }

    pub fn median(&self) -> Option<f64> {
        let mut v = self.runs.clone();
        v.sort_by(f64::total_cmp);
        let n = v.len();
        match n {
            0 => None,
            _ if n % 2 == 1 => Some(v[n / 2]),
            _ => Some((v[n / 2 - 1] + v[n / 2]) / 2.0),
        }
    }

    pub fn min(&self) -> Option<f64> {
        self.runs.iter().copied().min_by(f64::total_cmp)
    }

    pub fn max(&self) -> Option<f64> {
        self.runs.iter().copied().max_by(f64::total_cmp)
    }

    pub fn to_json(&self) -> Value {
        json!({
            "name": self.name,
            "what": self.what,
            "unit": self.unit,
            "runs": self.runs,
            "median": self.median(),
            "min": self.min(),
            "max": self.max(),
        })
    }
}

/// A target a figure is held to (from the issue that asked for it), and
/// whether the run met it.
#[derive(Clone, Debug)]
pub struct Target {
    /// `hcp start stall <= 0.5 x lvcreate`
    pub what: String,
    /// The median it was judged on.
    pub measured: String,
    pub met: bool,
}

/// One part of the benchmark: how it was run, and what it found.
#[derive(Clone, Debug, Default)]
pub struct Section {
    /// Stable, for machines: `switch_cost`.
    pub id: String,
    pub title: String,
    /// How it was run: load, repetitions, order (A and B alternate), where.
    pub method: String,
    pub figures: Vec<Figure>,
    pub targets: Vec<Target>,
}

impl Section {
    pub fn figure(&self, name: &str) -> Option<&Figure> {
        self.figures.iter().find(|f| f.name == name)
    }

    pub fn to_json(&self) -> Value {
        json!({
            "id": self.id,
            "title": self.title,
            "method": self.method,
            "figures": self.figures.iter().map(Figure::to_json).collect::<Vec<_>>(),
            "targets": self.targets.iter().map(|t| json!({"what": t.what, "measured": t.measured, "met": t.met})).collect::<Vec<_>>(),
        })
    }

    /// The section as Markdown: its method, a table of figures, its targets.
    pub fn to_markdown(&self) -> String {
        let mut md = String::new();
        let _ = writeln!(md, "## {}\n\n{}\n", self.title, self.method);
        let _ = writeln!(md, "| figure | what it counts | runs | median | min | max |");
        let _ = writeln!(md, "|---|---|---:|---:|---:|---:|");
        for f in &self.figures {
            let cell =
                |v: Option<f64>| v.map(|v| format!("{} {}", significant(v), f.unit)).unwrap_or_else(|| "–".into());
            let _ = writeln!(
                md,
                "| `{}` | {} | {} | {} | {} | {} |",
                f.name,
                f.what,
                f.runs.len(),
                cell(f.median()),
                cell(f.min()),
                cell(f.max())
            );
        }
        if !self.targets.is_empty() {
            let _ = writeln!(md, "\n| target | measured (median) | met |\n|---|---|---|");
            for t in &self.targets {
                let _ = writeln!(md, "| {} | {} | {} |", t.what, t.measured, if t.met { "yes" } else { "**no**" });
            }
        }
        md
    }
}

/// Three significant digits, without an exponent for everyday sizes.
pub fn significant(v: f64) -> String {
    if v == 0.0 || !v.is_finite() {
        return format!("{v}");
    }
    let digits = (2 - v.abs().log10().floor() as i32).max(0) as usize;
    format!("{v:.digits$}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians_of_odd_and_even_runs() {
        let mut f = Figure::new("x", "x", "ms");
        assert_eq!(f.median(), None);
        f.runs = vec![3.0, 1.0, 2.0];
        assert_eq!((f.median(), f.min(), f.max()), (Some(2.0), Some(1.0), Some(3.0)));
        f.runs.push(10.0);
        assert_eq!(f.median(), Some(2.5));
    }

    #[test]
    fn significant_digits() {
        assert_eq!(significant(1234.4), "1234");
        assert_eq!(significant(12.345), "12.3");
        assert_eq!(significant(0.012345), "0.0123");
    }
}
