//! What a button press means on a given device: the button table (`config/button-models.toml`,
//! compiled in), the registry's per-device override (`help_presses`), and the defaults by class.
//! Normalization asks [`ButtonTable::is_help`] for every reading that carries a `button`; a
//! press that means help adds `sos = true`, which the SOS rule (R4) reads.

use std::collections::HashMap;

use serde::Deserialize;

use crate::registry::Device;
use crate::vocabulary::BUTTONS;

/// The shipped table.
pub const SHIPPED: &str = include_str!("../../config/button-models.toml");

/// The press a device reports as a call for help itself: help whatever the model.
pub const EMERGENCY: &str = "emergency";

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TableFile {
    #[serde(default)]
    models: Vec<ModelFile>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ModelFile {
    /// The registry's `model` text.
    model: String,
    /// Presses that are a call for help.
    help: Vec<String>,
    /// Presses that cancel a call (kept as the press; they resolve nothing).
    #[serde(default)]
    cancel: Vec<String>,
}

/// Help presses per model (lower-cased, trimmed).
#[derive(Debug, Clone, Default)]
pub struct ButtonTable {
    help: HashMap<String, Vec<String>>,
}

/// Why a button table cannot be used.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ButtonTableError {
    #[error("button table: {0}")]
    Parse(String),
    #[error("button table: model `{model}`: {problem}")]
    Model { model: String, problem: String },
}

fn model_key(model: &str) -> String {
    model.trim().to_lowercase()
}

impl ButtonTable {
    /// The table compiled into the gateway.
    pub fn shipped() -> Result<ButtonTable, ButtonTableError> {
        ButtonTable::parse(SHIPPED)
    }

    pub fn parse(text: &str) -> Result<ButtonTable, ButtonTableError> {
        let file: TableFile = toml::from_str(text).map_err(|e| ButtonTableError::Parse(e.to_string()))?;
        let mut help = HashMap::new();
        for m in file.models {
            let problem = |problem: String| ButtonTableError::Model {
                model: m.model.clone(),
                problem,
            };
            for p in m.help.iter().chain(&m.cancel) {
                if !BUTTONS.contains(&p.as_str()) || p == "none" {
                    return Err(problem(format!(
                        "`{p}` is not a press; one of {}",
                        BUTTONS[1..].join(", ")
                    )));
                }
            }
            if let Some(p) = m.help.iter().find(|p| m.cancel.contains(p)) {
                return Err(problem(format!("`{p}` is both help and cancel")));
            }
            if help.insert(model_key(&m.model), m.help).is_some() {
                return Err(problem("listed twice".to_owned()));
            }
        }
        Ok(ButtonTable { help })
    }

    /// How many models the table lists.
    pub fn len(&self) -> usize {
        self.help.len()
    }

    pub fn is_empty(&self) -> bool {
        self.help.is_empty()
    }

    /// Whether `press` on `device` (`None`: not in the registry) is a call for help.
    pub fn is_help(&self, device: Option<&Device>, press: &str) -> bool {
        if press == EMERGENCY {
            return true;
        }
        let Some(d) = device else {
            return false;
        };
        if let Some(own) = &d.help_presses {
            return own.iter().any(|p| p == press);
        }
        match self.help.get(&model_key(&d.model)) {
            Some(help) => help.iter().any(|p| p == press),
            // A device that exists only to call for help: every press is a call.
            None => d.class == "sos_button" && press != "none",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn device(class: &str, model: &str, own: Option<&[&str]>) -> Device {
        let text = format!(
            "site = \"s\"\n[[devices]]\nid = \"d\"\nclass = \"{class}\"\nmodel = \"{model}\"\ninterval_s = 60\n"
        );
        let reg = crate::registry::Registry::parse(std::path::Path::new("r.toml"), &text).expect("registry");
        let mut d = reg.get("d").expect("device").as_ref().clone();
        d.help_presses = own.map(|o| o.iter().map(|s| (*s).to_owned()).collect());
        d
    }

    #[test]
    fn presses_mean_help_per_model_with_defaults_by_class() {
        let t = ButtonTable::shipped().expect("shipped table");
        let hs1eb = device("sos_button", "Heiman HS1EB", None);
        for p in ["single", "double", "long", "emergency"] {
            assert!(t.is_help(Some(&hs1eb), p), "HS1EB {p}");
        }
        // Models are matched ignoring case and spaces around.
        let ws101 = device("sos_button", "  milesight ws101 ", None);
        assert!(t.is_help(Some(&ws101), "long"));
        assert!(
            !t.is_help(Some(&ws101), "double"),
            "a double press cancels on the WS101"
        );
        let climax = device("wearable", "Climax pendant", None);
        assert!(t.is_help(Some(&climax), "single"));
        assert!(!t.is_help(Some(&climax), "long"), "holding it cancels");
        // Unknown models: an SOS button calls for help with any press, a wearable only with an
        // emergency press; a device missing from the registry only with an emergency press.
        let unknown_sos = device("sos_button", "no-name pull cord", None);
        assert!(t.is_help(Some(&unknown_sos), "double"));
        let watch = device("wearable", "4G watch", None);
        assert!(!t.is_help(Some(&watch), "single"));
        assert!(t.is_help(Some(&watch), "emergency"));
        assert!(t.is_help(None, "emergency"));
        assert!(!t.is_help(None, "single"));
        // The registry's own list wins over the model's.
        let own = device("sos_button", "Heiman HS1EB", Some(&["long"]));
        assert!(!t.is_help(Some(&own), "single"));
        assert!(t.is_help(Some(&own), "long"));
    }

    #[test]
    fn a_bad_table_is_refused_with_its_model() {
        let e = ButtonTable::parse("[[models]]\nmodel = \"X\"\nhelp = [\"tripple\"]\n").unwrap_err();
        assert!(
            e.to_string().contains("`X`") && e.to_string().contains("tripple"),
            "{e}"
        );
        let e =
            ButtonTable::parse("[[models]]\nmodel = \"X\"\nhelp = [\"single\"]\ncancel = [\"single\"]\n").unwrap_err();
        assert!(e.to_string().contains("both"), "{e}");
    }
}
