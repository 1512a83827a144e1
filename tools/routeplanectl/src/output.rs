//! Printing: aligned tables for people, every field as JSON or YAML for scripts. A command builds
//! one serializable view and says how it looks as tables; the format flag picks.

use std::io::{IsTerminal, Write};

use serde::Serialize;

use crate::cli::Format;
use crate::connect::CtlError;

/// One table: an optional title line, a header row, rows of cells.
#[derive(Debug, Default)]
pub struct Table {
    pub title: Option<String>,
    pub headers: Vec<&'static str>,
    pub rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new(headers: &[&'static str]) -> Table {
        Table {
            headers: headers.to_vec(),
            ..Table::default()
        }
    }

    pub fn titled(mut self, title: impl Into<String>) -> Table {
        self.title = Some(title.into());
        self
    }

    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    /// Columns padded to their widest cell, two spaces apart; the last column unpadded.
    pub fn render(&self) -> String {
        let mut widths: Vec<usize> = self.headers.iter().map(|h| h.len()).collect();
        for row in &self.rows {
            for (i, cell) in row.iter().enumerate() {
                if let Some(w) = widths.get_mut(i) {
                    *w = (*w).max(cell.chars().count());
                }
            }
        }
        let line = |cells: &mut dyn Iterator<Item = &str>| {
            let mut out = String::new();
            let cells: Vec<&str> = cells.collect();
            for (i, cell) in cells.iter().enumerate() {
                if i + 1 == cells.len() {
                    out.push_str(cell);
                } else {
                    let pad = widths[i].saturating_sub(cell.chars().count()) + 2;
                    out.push_str(cell);
                    out.push_str(&" ".repeat(pad));
                }
            }
            out.trim_end().to_string() + "\n"
        };
        let mut out = String::new();
        if let Some(t) = &self.title {
            out.push_str(t);
            out.push('\n');
        }
        out.push_str(&line(&mut self.headers.iter().copied()));
        for row in &self.rows {
            out.push_str(&line(&mut row.iter().map(String::as_str)));
        }
        out
    }
}

/// A command's result.
pub trait Render: Serialize {
    fn tables(&self) -> Vec<Table>;
}

pub fn print(format: Format, value: &impl Render) -> Result<(), CtlError> {
    write(&render(format, value)?)
}

/// Writes to stdout, flushed (a `watch` line shows as it happens).
pub fn write(text: &str) -> Result<(), CtlError> {
    let mut out = std::io::stdout().lock();
    out.write_all(text.as_bytes())
        .and_then(|()| out.flush())
        .map_err(|e| CtlError::Output(format!("cannot write the output: {e}")))
}

pub fn render(format: Format, value: &impl Render) -> Result<String, CtlError> {
    match format {
        Format::Table => Ok(value
            .tables()
            .iter()
            .map(Table::render)
            .collect::<Vec<_>>()
            .join("\n")),
        Format::Json => serde_json::to_string_pretty(value)
            .map(|s| s + "\n")
            .map_err(|e| CtlError::Output(e.to_string())),
        Format::Yaml => serde_yaml::to_string(value).map_err(|e| CtlError::Output(e.to_string())),
    }
}

/// Progress of something slow, on stderr when it is a terminal (scripts' output stays clean).
pub struct Progress {
    shown: bool,
}

impl Progress {
    pub fn new() -> Progress {
        Progress {
            shown: std::io::stderr().is_terminal(),
        }
    }

    pub fn step(&self, what: &str, done: usize, of: usize) {
        if self.shown {
            eprint!("\r{what}: {done}/{of}");
        }
    }

    pub fn done(&self) {
        if self.shown {
            eprint!("\r\x1b[K");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_line_up_whatever_the_cell_widths() {
        let mut t = Table::new(&["PEER", "STATE", "LAST ERROR"]);
        t.row(vec![
            "10.4.36.239".into(),
            "established".into(),
            String::new(),
        ]);
        t.row(vec!["10.4.36.2".into(), "active".into(), "refused".into()]);
        assert_eq!(
            t.render(),
            "PEER         STATE        LAST ERROR\n10.4.36.239  established\n10.4.36.2    active       refused\n"
        );
    }
}
