//! Validation reports: a partner's signed statement of how a model version performs on its own
//! local data.
//!
//! A report names the model version by content id, the validator, a description of the data set
//! (site, country, what it is), how many samples it holds, and metrics with optional confidence
//! intervals. Reports travel by gossip and are stored by every peer; certification policies are
//! evaluated over the reports a peer holds, so every peer reaches the same verdict on its own.
//! This module only defines and checks the report; it never evaluates a model.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::identity::{ContentId, MemberId, Signable};

/// Most metrics per report.
pub const MAX_METRICS: usize = 32;
/// Longest text field (names, descriptions).
pub const MAX_TEXT: usize = 256;

/// The local data a model version was validated on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Dataset {
    /// Short name of the data set.
    pub name: String,
    /// Site that holds it.
    pub site: String,
    /// ISO 3166-1 alpha-2 country code of the site.
    pub country: String,
    /// Free text: selection criteria, time span, preprocessing.
    pub description: String,
}

/// A metric value with an optional confidence interval.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Metric {
    /// Point estimate.
    pub value: f64,
    /// Lower bound of the 95 % confidence interval, if computed.
    pub low: Option<f64>,
    /// Upper bound of the 95 % confidence interval, if computed.
    pub high: Option<f64>,
}

/// A validation report.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Report {
    /// The model version validated.
    pub model: ContentId,
    /// The validator; must equal the signer.
    pub validator: MemberId,
    /// The data it was validated on.
    pub dataset: Dataset,
    /// Number of samples evaluated.
    pub samples: u64,
    /// Metrics by name (e.g. `auc`, `accuracy`).
    pub metrics: BTreeMap<String, Metric>,
    /// When the report was made, milliseconds since the Unix epoch, as the validator's node said.
    pub issued_at_ms: u64,
}

impl Signable for Report {
    const CONTEXT: &'static str = "medmesh 2026-11 validation report v1";
    const MAX_LEN: usize = 16 * 1024;
}

/// Why a report is not acceptable, beyond its signature.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum Error {
    /// Signed by someone other than the named validator.
    #[error("report names validator {validator} but is signed by {signer}")]
    ValidatorMismatch {
        /// Named validator.
        validator: MemberId,
        /// Actual signer.
        signer: MemberId,
    },
    /// A field is outside its allowed range.
    #[error("invalid report: {0}")]
    Invalid(&'static str),
}

impl Report {
    /// Checks the rules a report must follow whoever signed it.
    pub fn check(&self, signer: MemberId) -> Result<(), Error> {
        if self.validator != signer {
            return Err(Error::ValidatorMismatch {
                validator: self.validator,
                signer,
            });
        }
        if self.samples == 0 {
            return Err(Error::Invalid("sample count must be positive"));
        }
        let d = &self.dataset;
        if [&d.name, &d.site, &d.description]
            .iter()
            .any(|t| t.len() > MAX_TEXT)
        {
            return Err(Error::Invalid("text field longer than 256 bytes"));
        }
        if d.country.len() != 2 || !d.country.bytes().all(|b| b.is_ascii_uppercase()) {
            return Err(Error::Invalid("country must be an ISO 3166-1 alpha-2 code"));
        }
        if self.metrics.is_empty() || self.metrics.len() > MAX_METRICS {
            return Err(Error::Invalid("a report carries 1 to 32 metrics"));
        }
        for (name, m) in &self.metrics {
            if name.is_empty() || name.len() > 64 {
                return Err(Error::Invalid("bad metric name"));
            }
            let bounds = [m.low, m.high];
            if !m.value.is_finite() || bounds.iter().flatten().any(|b| !b.is_finite()) {
                return Err(Error::Invalid("metric values must be finite"));
            }
            if m.low.is_some_and(|l| l > m.value) || m.high.is_some_and(|h| h < m.value) {
                return Err(Error::Invalid("confidence interval must contain the value"));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::Keypair;

    fn report(validator: MemberId) -> Report {
        Report {
            model: ContentId([4; 32]),
            validator,
            dataset: Dataset {
                name: "cleveland-test".into(),
                site: "Cleveland Clinic".into(),
                country: "US".into(),
                description: "FLamby test split of center 0".into(),
            },
            samples: 104,
            metrics: BTreeMap::from([(
                "auc".to_string(),
                Metric {
                    value: 0.85,
                    low: Some(0.78),
                    high: Some(0.91),
                },
            )]),
            issued_at_ms: 1_795_000_000_000,
        }
    }

    #[test]
    fn good_report_signs_and_checks() {
        let k = Keypair::from_seed([9; 32]);
        let signed = k.sign(report(k.id()));
        let verified = signed.signed().clone().verify().expect("verifies");
        assert_eq!(verified.check(k.id()), Ok(()));
    }

    #[test]
    fn bad_reports_are_refused() {
        let k = Keypair::from_seed([9; 32]);
        let other = Keypair::from_seed([8; 32]).id();
        assert!(matches!(
            report(other).check(k.id()),
            Err(Error::ValidatorMismatch { .. })
        ));
        let mut r = report(k.id());
        r.dataset.country = "usa".into();
        assert!(r.check(k.id()).is_err());
        let mut r = report(k.id());
        r.metrics.insert(
            "acc".into(),
            Metric {
                value: 0.5,
                low: Some(0.6),
                high: None,
            },
        );
        assert!(r.check(k.id()).is_err());
        let mut r = report(k.id());
        r.samples = 0;
        assert!(r.check(k.id()).is_err());
        let mut r = report(k.id());
        r.metrics.clear();
        assert!(r.check(k.id()).is_err());
    }
}
