//! `ficus-plugin.toml`: what `ficus plugin build` needs to know about a
//! project.
//!
//! ```toml
//! name = "api-key"    # the component is written to build/api-key.wasm
//! lang = "python"     # rust | python | js
//! entry = "app"       # python: the module defining FilterHooks (default "app");
//!                     # js: the ES module exporting filterHooks (default "filter.js")
//! world = "plugin"    # python/js: the world in wit/ (default "plugin")
//! ```
//!
//! The file is flat: `key = "string"` lines, comments and blank lines (a
//! subset of TOML, read without a TOML parser).

use super::{Lang, ScaffoldError};
use std::path::Path;

/// The manifest's file name in a project directory.
pub const MANIFEST_FILE: &str = "ficus-plugin.toml";

/// A parsed `ficus-plugin.toml`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Manifest {
    /// Plugin name: the output file is `build/<name>.wasm`.
    pub name: String,
    /// The project's language.
    pub lang: Lang,
    /// Python module or JavaScript file to build (unused for Rust).
    pub entry: String,
    /// The WIT world in `wit/` (unused for Rust).
    pub world: String,
}

impl Manifest {
    /// The manifest text for a new project.
    pub fn render(&self) -> String {
        let mut text = format!(
            "# A Ficus plugin project: `ficus plugin build` reads this file and writes\n\
             # build/{name}.wasm.\n\
             name = \"{name}\"\n\
             lang = \"{lang}\"\n",
            name = self.name,
            lang = self.lang
        );
        match self.lang {
            Lang::Rust => {}
            Lang::Python => text.push_str(&format!(
                "# The module that defines the class FilterHooks.\nentry = \"{}\"\n\
                 # The world in wit/ that the component targets.\nworld = \"{}\"\n",
                self.entry, self.world
            )),
            Lang::Js => text.push_str(&format!(
                "# The ES module that exports `filterHooks`.\nentry = \"{}\"\n\
                 # The world in wit/ that the component targets.\nworld = \"{}\"\n",
                self.entry, self.world
            )),
        }
        text
    }

    /// Read `dir/ficus-plugin.toml`.
    pub fn load(dir: &Path) -> Result<Manifest, ScaffoldError> {
        let path = dir.join(MANIFEST_FILE);
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(ScaffoldError::Invalid(format!(
                    "{} is not a Ficus plugin project: it has no {MANIFEST_FILE} \
                     (start one with `ficus plugin new NAME --lang rust|python|js`)",
                    dir.display()
                )))
            }
            Err(e) => return Err(ScaffoldError::io("read", &path, e)),
        };
        Manifest::parse(&text)
            .map_err(|e| ScaffoldError::Invalid(format!("{}:{e}", path.display())))
    }

    /// Parse manifest text; errors start with the line number.
    pub fn parse(text: &str) -> Result<Manifest, String> {
        let (mut name, mut lang, mut entry, mut world) = (None, None, None, None);
        for (i, raw) in text.lines().enumerate() {
            let line_no = i + 1;
            let line = strip_comment(raw).trim();
            if line.is_empty() {
                continue;
            }
            let Some((key, value)) = line.split_once('=') else {
                return Err(format!(
                    "{line_no}: expected `key = \"value\"`, found {line:?}"
                ));
            };
            let key = key.trim();
            let value = value.trim();
            let value = value
                .strip_prefix('"')
                .and_then(|v| v.strip_suffix('"'))
                .filter(|v| !v.contains(['"', '\\']))
                .ok_or_else(|| {
                    format!("{line_no}: `{key}`: expected a string in double quotes, found {value}")
                })?
                .to_owned();
            let slot = match key {
                "name" => &mut name,
                "lang" => &mut lang,
                "entry" => &mut entry,
                "world" => &mut world,
                _ => {
                    return Err(format!(
                        "{line_no}: unknown key `{key}` (expected name, lang, entry or world)"
                    ))
                }
            };
            if slot.replace(value).is_some() {
                return Err(format!("{line_no}: `{key}` is set twice"));
            }
        }
        let name = name.ok_or("1: missing `name = \"...\"`")?;
        check_name(&name).map_err(|e| format!("1: `name`: {e}"))?;
        let lang_name = lang.ok_or("1: missing `lang = \"rust\"` (or \"python\", \"js\")")?;
        let lang = Lang::parse(&lang_name).ok_or_else(|| {
            format!("1: `lang`: unknown language {lang_name:?} (expected rust, python or js)")
        })?;
        let entry = entry
            .or_else(|| lang.default_entry().map(str::to_owned))
            .unwrap_or_default();
        Ok(Manifest {
            name,
            lang,
            entry,
            world: world.unwrap_or_else(|| "plugin".to_owned()),
        })
    }
}

/// The line without a `#` comment (the values never contain `#` inside quotes
/// that matter here, but a quoted `#` is kept).
fn strip_comment(line: &str) -> &str {
    let mut in_string = false;
    for (i, c) in line.char_indices() {
        match c {
            '"' => in_string = !in_string,
            '#' if !in_string => return &line[..i],
            _ => {}
        }
    }
    line
}

/// Rust keywords and names of the standard crates: not usable as a package
/// name by cargo.
const RESERVED: &[&str] = &[
    "as",
    "async",
    "await",
    "break",
    "const",
    "continue",
    "crate",
    "dyn",
    "else",
    "enum",
    "extern",
    "false",
    "fn",
    "for",
    "if",
    "impl",
    "in",
    "let",
    "loop",
    "match",
    "mod",
    "move",
    "mut",
    "pub",
    "ref",
    "return",
    "self",
    "static",
    "struct",
    "super",
    "trait",
    "true",
    "type",
    "unsafe",
    "use",
    "where",
    "while",
    "abstract",
    "become",
    "box",
    "do",
    "final",
    "macro",
    "override",
    "priv",
    "typeof",
    "unsized",
    "virtual",
    "yield",
    "try",
    "gen",
    "std",
    "core",
    "alloc",
    "test",
    "proc-macro",
];

/// A plugin name: lower-case words of letters and digits, each starting with a
/// letter, joined by `-` (valid as a cargo package, a file and a WIT name).
pub(crate) fn check_name(name: &str) -> Result<(), String> {
    let words_ok = !name.is_empty()
        && name.len() <= 64
        && name.split('-').all(|word| {
            word.chars().next().is_some_and(|c| c.is_ascii_lowercase())
                && word
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
        });
    if !words_ok {
        return Err(format!(
            "{name:?} is not a valid plugin name: use lower-case words of letters and digits, \
             each starting with a letter, joined by `-` (e.g. `api-key`)"
        ));
    }
    if RESERVED.contains(&name) {
        return Err(format!(
            "{name:?} is a Rust keyword or standard crate name: pick another plugin name"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_python_manifest_with_comments_and_defaults() {
        let m =
            Manifest::parse("# hi\nname = \"api-key\"  # the name\nlang = \"python\"\n").unwrap();
        assert_eq!(
            m,
            Manifest {
                name: "api-key".into(),
                lang: Lang::Python,
                entry: "app".into(),
                world: "plugin".into()
            }
        );
        assert_eq!(Manifest::parse(&m.render()).unwrap(), m);
    }

    #[test]
    fn rejects_what_it_does_not_know() {
        let err = Manifest::parse("name = \"x\"\nlang = \"go\"\n").unwrap_err();
        assert!(err.contains("unknown language \"go\""), "{err}");
        let err = Manifest::parse("name = \"x\"\nlang = \"js\"\nmain = \"a.js\"\n").unwrap_err();
        assert!(err.starts_with("3: unknown key `main`"), "{err}");
        let err = Manifest::parse("name = x\n").unwrap_err();
        assert!(err.contains("expected a string"), "{err}");
        let err = Manifest::parse("lang = \"js\"\n").unwrap_err();
        assert!(err.contains("missing `name"), "{err}");
    }

    #[test]
    fn plugin_names() {
        for ok in ["a", "api-key", "geo-router2", "v1-x"] {
            assert!(check_name(ok).is_ok(), "{ok}");
        }
        for bad in [
            "", "Api", "api_key", "-a", "a-", "a--b", "1a", "a-1", "loop", "a.b",
        ] {
            assert!(check_name(bad).is_err(), "{bad}");
        }
    }
}
