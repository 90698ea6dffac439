//! [`Diagnostic`]: one problem in one manifest, with where it is and why, and its rendering
//! in the style of rustc (`--> file:line:col`, the source line, a caret).

use serde::Serialize;

/// What kind of check produced a diagnostic; stable strings for `--output json`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Code {
    /// The file could not be read.
    Io,
    /// The text is not valid YAML/JSON, or uses a refused YAML feature.
    Parse,
    /// A hard limit was crossed.
    Limit,
    /// `apiVersion`/`kind` are missing or not supported.
    Kind,
    /// The JSON Schema of the kind rejects the object.
    Schema,
    /// A rule Kubernetes enforces beyond the schema (names, ranges, consistency).
    Semantic,
    /// A reference to another object in the tree does not resolve.
    Reference,
    /// Two objects have the same kind, namespace and name.
    Duplicate,
}

impl Code {
    pub fn as_str(self) -> &'static str {
        match self {
            Code::Io => "io",
            Code::Parse => "parse",
            Code::Limit => "limit",
            Code::Kind => "kind",
            Code::Schema => "schema",
            Code::Semantic => "semantic",
            Code::Reference => "reference",
            Code::Duplicate => "duplicate",
        }
    }
}

/// One problem, located as precisely as we can: file, 1-based line and column, and the JSON
/// pointer inside the document (empty when the problem is about the file as a whole).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Diagnostic {
    pub file: String,
    pub line: u32,
    pub column: u32,
    pub pointer: String,
    pub reason: String,
    pub code: Code,
    /// The source line the diagnostic points at, for rendering without re-reading the file.
    #[serde(skip)]
    pub source_line: Option<String>,
}

impl Diagnostic {
    /// Renders like rustc:
    ///
    /// ```text
    /// error[schema]: /spec/replicas: "three" is not of type "integer"
    ///   --> apps/web.yaml:12:13
    ///    |
    /// 12 |   replicas: three
    ///    |             ^
    /// ```
    pub fn render(&self, color: bool) -> String {
        let (red, blue, bold, reset) = if color {
            ("\x1b[1;31m", "\x1b[1;34m", "\x1b[1m", "\x1b[0m")
        } else {
            ("", "", "", "")
        };
        let loc = if self.pointer.is_empty() {
            String::new()
        } else {
            format!("{}: ", self.pointer)
        };
        let mut out = format!(
            "{red}error[{}]{reset}{bold}: {loc}{}{reset}\n",
            self.code.as_str(),
            self.reason
        );
        let num = self.line.to_string();
        let pad = " ".repeat(num.len());
        out.push_str(&format!(
            "{pad}{blue}-->{reset} {}:{}:{}\n",
            self.file, self.line, self.column
        ));
        if let Some(src) = &self.source_line {
            // Tabs would shift the caret; show them as single spaces.
            let src = src.replace('\t', " ");
            let caret_at = (self.column as usize)
                .saturating_sub(1)
                .min(src.chars().count());
            out.push_str(&format!("{pad} {blue}|{reset}\n"));
            out.push_str(&format!("{blue}{num} |{reset} {src}\n"));
            out.push_str(&format!(
                "{pad} {blue}|{reset} {}{red}^{reset}\n",
                " ".repeat(caret_at)
            ));
        }
        out
    }
}

/// Returns the 1-based `line` of `text`, without its line ending.
pub(crate) fn line_of(text: &str, line: u32) -> Option<String> {
    let idx = usize::try_from(line).ok()?.checked_sub(1)?;
    text.lines().nth(idx).map(|l| {
        // Keep rendering bounded even for a minified 1 MiB JSON line.
        if l.len() > 200 {
            let mut end = 200;
            while !l.is_char_boundary(end) {
                end -= 1;
            }
            format!("{}…", &l[..end])
        } else {
            l.to_string()
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_like_rustc() {
        let d = Diagnostic {
            file: "apps/web.yaml".into(),
            line: 12,
            column: 13,
            pointer: "/spec/replicas".into(),
            reason: "\"three\" is not of type \"integer\"".into(),
            code: Code::Schema,
            source_line: Some("  replicas: three".into()),
        };
        let want = "error[schema]: /spec/replicas: \"three\" is not of type \"integer\"\n  --> apps/web.yaml:12:13\n   |\n12 |   replicas: three\n   |             ^\n";
        assert_eq!(d.render(false), want);
    }

    #[test]
    fn long_lines_are_cut_on_a_char_boundary() {
        let text = format!("a\n{}", "é".repeat(300));
        let l = line_of(&text, 2).unwrap_or_default();
        assert!(l.ends_with('…'));
        assert!(l.len() <= 204);
        assert_eq!(line_of(&text, 3), None);
        assert_eq!(line_of(&text, 0), None);
    }
}
