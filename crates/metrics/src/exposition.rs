//! A scrape as plain data (families of labelled series) and its Prometheus text format
//! (version 0.0.4). Built afresh for each scrape, so nothing here is on a hot path.

use std::fmt::Write;

use crate::registry::HistogramSnapshot;

/// The content type of the text format.
pub const TEXT_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// What a metric is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Only goes up; its name ends in `_total`.
    Counter,
    /// Goes up and down.
    Gauge,
    /// A distribution over buckets.
    Histogram,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Histogram => "histogram",
        }
    }
}

/// One series' value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// A counter's or a gauge's.
    Number(f64),
    /// A histogram's.
    Histogram(HistogramSnapshot),
}

/// One series: label names and values, and the value.
#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    /// Label names (static: the set of names is fixed by the code) and values.
    pub labels: Vec<(&'static str, String)>,
    /// The value.
    pub value: Value,
}

/// A metric and its series.
#[derive(Debug, Clone, PartialEq)]
pub struct Family {
    /// The name, with its unit and (for counters) `_total`.
    pub name: &'static str,
    /// One line saying what it measures.
    pub help: &'static str,
    /// Counter, gauge or histogram.
    pub kind: Kind,
    /// Its series; a family without any is left out of the text.
    pub series: Vec<Series>,
}

impl Family {
    /// An empty family.
    pub fn new(name: &'static str, help: &'static str, kind: Kind) -> Self {
        Family {
            name,
            help,
            kind,
            series: Vec::new(),
        }
    }

    /// Adds a series with a number.
    pub fn number(mut self, labels: &[(&'static str, &str)], value: f64) -> Self {
        self.push_number(labels, value);
        self
    }

    /// Adds a series with a number.
    pub fn push_number(&mut self, labels: &[(&'static str, &str)], value: f64) {
        self.series.push(Series {
            labels: owned(labels),
            value: Value::Number(value),
        });
    }

    /// Adds a histogram's series.
    pub fn push_histogram(&mut self, labels: &[(&'static str, &str)], value: HistogramSnapshot) {
        self.series.push(Series {
            labels: owned(labels),
            value: Value::Histogram(value),
        });
    }
}

fn owned(labels: &[(&'static str, &str)]) -> Vec<(&'static str, String)> {
    labels
        .iter()
        .map(|(name, value)| (*name, value.to_string()))
        .collect()
}

/// The families in the text format, each with its `# HELP` and `# TYPE` lines.
pub fn encode_text(families: &[Family]) -> String {
    let mut out = String::with_capacity(families.len() * 256);
    for family in families.iter().filter(|f| !f.series.is_empty()) {
        let _ = writeln!(out, "# HELP {} {}", family.name, escape_help(family.help));
        let _ = writeln!(out, "# TYPE {} {}", family.name, family.kind.name());
        for series in &family.series {
            match &series.value {
                Value::Number(value) => {
                    sample(&mut out, family.name, "", &series.labels, None, *value)
                }
                Value::Histogram(histogram) => {
                    for (bound, count) in histogram.bounds.iter().zip(&histogram.cumulative) {
                        sample(
                            &mut out,
                            family.name,
                            "_bucket",
                            &series.labels,
                            Some(&number(*bound)),
                            *count as f64,
                        );
                    }
                    let count = histogram.count() as f64;
                    sample(
                        &mut out,
                        family.name,
                        "_bucket",
                        &series.labels,
                        Some("+Inf"),
                        count,
                    );
                    sample(
                        &mut out,
                        family.name,
                        "_sum",
                        &series.labels,
                        None,
                        histogram.sum,
                    );
                    sample(&mut out, family.name, "_count", &series.labels, None, count);
                }
            }
        }
    }
    out
}

fn sample(
    out: &mut String,
    name: &str,
    suffix: &str,
    labels: &[(&'static str, String)],
    le: Option<&str>,
    value: f64,
) {
    out.push_str(name);
    out.push_str(suffix);
    if !labels.is_empty() || le.is_some() {
        out.push('{');
        let mut first = true;
        let extra = le.map(|le| ("le", le));
        for (label, value) in labels.iter().map(|(l, v)| (*l, v.as_str())).chain(extra) {
            if !first {
                out.push(',');
            }
            first = false;
            out.push_str(label);
            out.push_str("=\"");
            escape_label_into(out, value);
            out.push('"');
        }
        out.push('}');
    }
    out.push(' ');
    out.push_str(&number(value));
    out.push('\n');
}

/// A number as the text format writes it: integers without a fraction, `+Inf`, `-Inf`, `NaN`.
pub fn number(value: f64) -> String {
    if value.is_nan() {
        "NaN".to_string()
    } else if value == f64::INFINITY {
        "+Inf".to_string()
    } else if value == f64::NEG_INFINITY {
        "-Inf".to_string()
    } else if value.abs() >= 1e15 {
        format!("{value:e}")
    } else if value.fract() == 0.0 {
        format!("{}", value as i64)
    } else {
        format!("{value}")
    }
}

fn escape_help(help: &str) -> String {
    help.replace('\\', "\\\\").replace('\n', "\\n")
}

fn escape_label_into(out: &mut String, value: &str) {
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::Histogram;

    #[test]
    fn counters_and_gauges_are_written_with_help_type_and_escaped_labels() {
        let families = vec![
            Family::new(
                "atoll_things_total",
                "Things seen.\nTwo lines.",
                Kind::Counter,
            )
            .number(&[("route", "/v1/kv/{*key}"), ("odd", "a\"b\\c\nd")], 3.0),
            Family::new("atoll_level", "A level.", Kind::Gauge).number(&[], 0.25),
            Family::new("atoll_unseen", "Nothing yet.", Kind::Gauge),
        ];
        assert_eq!(
            encode_text(&families),
            "# HELP atoll_things_total Things seen.\\nTwo lines.\n\
             # TYPE atoll_things_total counter\n\
             atoll_things_total{route=\"/v1/kv/{*key}\",odd=\"a\\\"b\\\\c\\nd\"} 3\n\
             # HELP atoll_level A level.\n\
             # TYPE atoll_level gauge\n\
             atoll_level 0.25\n"
        );
    }

    #[test]
    fn histograms_have_cumulative_buckets_inf_sum_and_count() {
        let histogram = Histogram::new(&[0.1, 1.0]);
        histogram.observe(0.05);
        histogram.observe(0.5);
        histogram.observe(3.0);
        let mut family = Family::new("atoll_wait_seconds", "Waits.", Kind::Histogram);
        family.push_histogram(&[("kind", "a")], histogram.snapshot());
        assert_eq!(
            encode_text(&[family]),
            "# HELP atoll_wait_seconds Waits.\n\
             # TYPE atoll_wait_seconds histogram\n\
             atoll_wait_seconds_bucket{kind=\"a\",le=\"0.1\"} 1\n\
             atoll_wait_seconds_bucket{kind=\"a\",le=\"1\"} 2\n\
             atoll_wait_seconds_bucket{kind=\"a\",le=\"+Inf\"} 3\n\
             atoll_wait_seconds_sum{kind=\"a\"} 3.55\n\
             atoll_wait_seconds_count{kind=\"a\"} 3\n"
        );
    }

    #[test]
    fn numbers_are_written_as_the_format_reads_them() {
        assert_eq!(number(1.0), "1");
        assert_eq!(number(-2.0), "-2");
        assert_eq!(number(0.000_05), "0.00005");
        assert_eq!(number(f64::INFINITY), "+Inf");
        assert_eq!(number(f64::NEG_INFINITY), "-Inf");
        assert_eq!(number(f64::NAN), "NaN");
        assert_eq!(number(1.5e300), "1.5e300");
    }
}
