//! Validation reports: a partner's signed statement of how a model version performs on its own
//! local data.
//!
//! A report names the model version by content id, the validator, a description of the data set
//! (site, country, what it is), how many samples it holds, and metrics with optional confidence
//! intervals. Reports travel by gossip and are stored by every peer; certification policies are
//! evaluated over the reports a peer holds, so every peer reaches the same verdict on its own.
//! This module only defines and checks the report; it never evaluates a model.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::identity::{ContentId, MemberId, Signable, Verified};
use crate::roster::Roster;

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

/// When a model version counts as certified: enough validators, from enough countries, each
/// reporting a metric at or above a bar on enough samples. Part of the experiment's config, so
/// every peer evaluates the same rule over the signed reports it holds and reaches the same
/// verdict without asking anyone.
///
/// ```toml
/// [experiment.certification]   # certified when ≥ 2 validators from ≥ 2 countries
/// metric = "auc"               # report AUC ≥ 0.80 on ≥ 100 samples each
/// min = 0.80
/// min_samples = 100
/// validators = 2
/// countries = 2
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Policy {
    /// The metric a report must carry, by name: a node's reports on a classifier carry `auc`,
    /// `accuracy` and `balanced_accuracy`, on a survival model `c_index` (Harrell's).
    pub metric: String,
    /// Its lowest acceptable point estimate.
    pub min: f64,
    /// Fewest samples a qualifying report must have evaluated.
    pub min_samples: u64,
    /// Fewest distinct qualifying validators.
    pub validators: usize,
    /// Fewest distinct countries among them, as the roster lists each validator's country
    /// (the roster's word, not the report's).
    pub countries: usize,
}

/// The verdict of a [`Policy`] on one model version.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Certification {
    /// The model version judged.
    pub model: ContentId,
    /// Whether the policy is met.
    pub certified: bool,
    /// Validators whose report qualifies, in id order.
    pub validators: Vec<MemberId>,
    /// Their countries, per the roster.
    pub countries: Vec<String>,
    /// Why it is not certified (empty when it is): each report that does not qualify and why
    /// ("validator Basel tested 68 patients, below min_samples 100"), then what is short
    /// ("1 country of 2 required").
    #[serde(default)]
    pub reasons: Vec<String>,
}

impl Policy {
    /// Judges `model` from `reports` (verified, as a peer stores them): only reports on this
    /// model, by a member of `roster` whose role may validate, carrying the metric at or above
    /// the bar on enough samples count; a validator counts once however many reports it sent.
    pub fn judge(
        &self,
        roster: &Roster,
        model: &ContentId,
        reports: &[Verified<Report>],
    ) -> Certification {
        let mut validators = BTreeSet::new();
        let mut countries = BTreeSet::new();
        let mut refused = Vec::new();
        for report in reports.iter().filter(|r| r.model == *model) {
            let signer = report.signer();
            let Some(member) = roster.member(&signer) else {
                refused.push(format!("{} is not a member", signer.short()));
                continue;
            };
            let name = &member.name;
            let why = if !member.role.may_validate() {
                Some(format!("{name}'s role may not validate"))
            } else if let Err(e) = report.check(signer) {
                Some(format!("{name}'s report is invalid: {e}"))
            } else if report.samples < self.min_samples {
                Some(format!(
                    "validator {name} tested {} patients, below min_samples {}",
                    report.samples, self.min_samples
                ))
            } else {
                match report.metrics.get(&self.metric) {
                    None => Some(format!("validator {name} reported no {}", self.metric)),
                    Some(m) if m.value < self.min => Some(format!(
                        "validator {name} measured {} {:.3}, below {}",
                        self.metric, m.value, self.min
                    )),
                    Some(_) => None,
                }
            };
            match why {
                Some(why) => refused.push(why),
                None => {
                    validators.insert(signer);
                    countries.insert(member.country.clone());
                }
            }
        }
        let certified = validators.len() >= self.validators && countries.len() >= self.countries;
        let mut reasons = Vec::new();
        if !certified {
            reasons = refused;
            reasons.dedup();
            if validators.len() < self.validators {
                reasons.push(format!(
                    "{} qualifying validator(s) of {} required",
                    validators.len(),
                    self.validators
                ));
            }
            if countries.len() < self.countries {
                reasons.push(format!(
                    "{} country(ies) of {} required",
                    countries.len(),
                    self.countries
                ));
            }
        }
        Certification {
            model: *model,
            certified,
            validators: validators.into_iter().collect(),
            countries: countries.into_iter().collect(),
            reasons,
        }
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

    #[test]
    fn policy_counts_distinct_validators_and_countries_per_the_roster() {
        use crate::roster::{Member, Role, Roster};

        let keys: Vec<Keypair> = (1..=5).map(|i| Keypair::from_seed([i; 32])).collect();
        let member = |k: &Keypair, country: &str, role: Role| Member {
            id: k.id(),
            name: "m".into(),
            site: "s".into(),
            country: country.into(),
            group: String::new(),
            role,
            addresses: Vec::new(),
        };
        let roster = Roster::genesis(
            "m",
            1,
            vec![
                member(&keys[0], "US", Role::Observer),
                member(&keys[1], "DE", Role::Validator),
                member(&keys[2], "DE", Role::Validator),
                member(&keys[3], "NL", Role::Validator),
            ],
        )
        .expect("roster");
        let model = ContentId([4; 32]);
        let signed = |k: &Keypair, auc: f64, samples: u64| {
            let mut r = report(k.id());
            r.samples = samples;
            r.metrics.insert(
                "auc".into(),
                Metric {
                    value: auc,
                    low: None,
                    high: None,
                },
            );
            k.sign(r).signed().clone().verify().expect("verifies")
        };
        let policy = Policy {
            metric: "auc".into(),
            min: 0.80,
            min_samples: 100,
            validators: 2,
            countries: 2,
        };
        // Two validators, one country: not enough countries.
        let two_de = [signed(&keys[1], 0.85, 104), signed(&keys[2], 0.9, 120)];
        let verdict = policy.judge(&roster, &model, &two_de);
        assert!(!verdict.certified);
        assert_eq!((verdict.validators.len(), verdict.countries.len()), (2, 1));
        // An observer (may not validate), a non-member, too few samples, a low score, another
        // model, and a repeat by one validator do not count.
        let mut other_model = report(keys[3].id());
        other_model.model = ContentId([5; 32]);
        let noise = vec![
            signed(&keys[0], 0.95, 500),
            signed(&keys[4], 0.95, 500),
            signed(&keys[3], 0.95, 99),
            signed(&keys[3], 0.79, 500),
            keys[3]
                .sign(other_model)
                .signed()
                .clone()
                .verify()
                .expect("verifies"),
            signed(&keys[1], 0.99, 1000),
        ];
        let mut all = two_de.to_vec();
        all.extend(noise);
        let verdict = policy.judge(&roster, &model, &all);
        assert!(!verdict.certified, "{verdict:?}");
        assert_eq!(verdict.countries, ["DE"]);
        // It says why, report by report, then what is short.
        let says = |text: &str| verdict.reasons.iter().any(|r| r.contains(text));
        assert!(
            says("tested 99 patients, below min_samples 100"),
            "{verdict:?}"
        );
        assert!(says("measured auc 0.790, below 0.8"), "{verdict:?}");
        assert!(says("role may not validate"), "{verdict:?}");
        assert!(says("is not a member"), "{verdict:?}");
        assert_eq!(
            verdict.reasons.last().map(String::as_str),
            Some("1 country(ies) of 2 required")
        );
        // A qualifying report from the Netherlands certifies it.
        all.push(signed(&keys[3], 0.81, 100));
        let verdict = policy.judge(&roster, &model, &all);
        assert!(verdict.certified);
        assert!(verdict.reasons.is_empty(), "{verdict:?}");
        assert_eq!(verdict.countries, ["DE", "NL"]);
        assert_eq!(verdict.validators.len(), 3);
    }
}
