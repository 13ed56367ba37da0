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

    pub fn with_runs(name: &str, what: &str, unit: &str, runs: Vec<f64>) -> Figure {
        Figure { runs, ..Figure::new(name, what, unit) }
    }

    /// Back from [`Figure::to_json`] (median, min and max are recomputed).
    pub fn from_json(v: &Value) -> Option<Figure> {
        Some(Figure {
            name: v["name"].as_str()?.into(),
            what: v["what"].as_str()?.into(),
            unit: v["unit"].as_str()?.into(),
            runs: v["runs"].as_array()?.iter().map(Value::as_f64).collect::<Option<_>>()?,
        })
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

    /// Back from [`Section::to_json`]: how a run of some parts keeps the
    /// sections of the others from `bench/results.json`.
    pub fn from_json(v: &Value) -> Option<Section> {
        let target = |t: &Value| {
            Some(Target {
                what: t["what"].as_str()?.into(),
                measured: t["measured"].as_str()?.into(),
                met: t["met"].as_bool()?,
            })
        };
        Some(Section {
            id: v["id"].as_str()?.into(),
            title: v["title"].as_str()?.into(),
            method: v["method"].as_str()?.into(),
            figures: v["figures"].as_array()?.iter().map(Figure::from_json).collect::<Option<_>>()?,
            targets: v["targets"].as_array()?.iter().map(target).collect::<Option<_>>()?,
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
    fn sections_survive_json() {
        let s = Section {
            id: "switch_cost".into(),
            title: "Switch".into(),
            method: "alternating".into(),
            figures: vec![Figure::with_runs("stall_ms/hcp_start", "stall", "ms", vec![1.5, 2.0])],
            targets: vec![Target { what: "stall <= 0.5 x LVM".into(), measured: "0.3".into(), met: true }],
        };
        let back = Section::from_json(&s.to_json()).expect("parses");
        assert_eq!(back.to_json(), s.to_json());
        assert!(Section::from_json(&json!({"id": "x"})).is_none());
    }

    #[test]
    fn significant_digits() {
        assert_eq!(significant(1234.4), "1234");
        assert_eq!(significant(12.345), "12.3");
        assert_eq!(significant(0.012345), "0.0123");
    }
}
