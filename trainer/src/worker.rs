//! The worker side of the training protocol (`medmesh_learning::frame`): reads requests from one
//! stream and answers each on the other, with one [`TchLearner`] built by
//! [`Request::Build`]. A training request continues from the privacy ledger the peer sends, and
//! its answer returns the ledger after the round (the peer keeps it; this process forgets it
//! when it ends).

use std::io::{self, Read, Write};

use medmesh_learning::frame::{
    Built, PROTOCOL, Request, Response, Setup, read_frame_with, write_frame_with,
};
use medmesh_learning::learner::{Error, Learner};

use crate::learner::TchLearner;
use crate::personalize::personalize;

/// Serves requests from `input` until it ends, answering on `output`. Refusals of the learner
/// are [`Response::Failed`] answers; an error is returned only when the streams fail (a
/// malformed frame, a closed output), after which the peer cannot be answered any more.
pub fn serve(input: &mut impl Read, output: &mut impl Write) -> io::Result<()> {
    let mut learner: Option<(TchLearner, Setup)> = None;
    let mut scratch = Vec::new();
    while let Some(request) = read_frame_with::<Request<'static>>(input, &mut scratch)? {
        let response = answer(&mut learner, request);
        write_frame_with(output, &response, &mut scratch)?;
    }
    Ok(())
}

fn answer(learner: &mut Option<(TchLearner, Setup)>, request: Request<'static>) -> Response {
    let result = match request {
        Request::Hello { .. } => {
            return Response::Hello {
                protocol: PROTOCOL,
                version: env!("CARGO_PKG_VERSION").to_owned(),
            };
        }
        Request::Build(setup) => build(learner, setup.into_owned()).map(Response::Built),
        Request::Train {
            params,
            steps,
            privacy,
        } => built(learner).and_then(|l| {
            l.load(&params)?;
            if let Some(ledger) = privacy {
                l.restore_privacy(&ledger)?;
            }
            let metrics = l.train(steps)?;
            Ok(Response::Trained {
                params: l.params(),
                metrics,
                privacy: l.privacy_state(),
            })
        }),
        Request::Predict { params, table } => built(learner).and_then(|l| {
            l.load(&params)?;
            Ok(Response::Predicted(l.predict(&table)?))
        }),
        Request::Personalize { params, search } => match learner.as_ref() {
            Some((_, setup)) => personalize(
                &setup.spec,
                &setup.training,
                setup.init_seed,
                &setup.data,
                &params,
                search,
            )
            .map(Response::Personalized),
            None => Err(no_learner()),
        },
    };
    result.unwrap_or_else(|e| Response::Failed(e.to_string()))
}

fn build(slot: &mut Option<(TchLearner, Setup)>, setup: Setup) -> Result<Built, Error> {
    *slot = None;
    let learner = TchLearner::new(
        setup.spec.clone(),
        setup.training.clone(),
        setup.init_seed,
        &setup.data,
    )?;
    let built = Built {
        dim: learner.dim(),
        samples: learner.samples(),
        init: learner.params(),
        layout: learner.layout(),
    };
    *slot = Some((learner, setup));
    Ok(built)
}

fn built(slot: &mut Option<(TchLearner, Setup)>) -> Result<&mut TchLearner, Error> {
    slot.as_mut()
        .map(|(learner, _)| learner)
        .ok_or_else(no_learner)
}

fn no_learner() -> Error {
    Error::Config("no learner yet: the first request must build one".into())
}
