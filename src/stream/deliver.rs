//! Frames into the hub: through the tracker (dedupe, watermark, livestream marks), and
//! first through the bot's activity policy and the conversation record when either is set.
//! Shared by the upstream socket's pump (`relay`) and REST polling after a collision
//! (`collision`), so both deliver alike; the multimodal bridge screens its bot frames with
//! the same `screen_frame`.

use std::sync::Arc;

use tokio_tungstenite::tungstenite::Utf8Bytes;

use super::hub::{EventParts, Hub};
use super::tracker::{Observed, StreamMark, Tracker};
use crate::gateway::Gateway;

/// The bot's activity policy and the conversation record for one upstream connection
/// (looked up per connection, so a reload reaches the next one); `None`, the common case
/// (neither), costs a frame one branch.
pub(super) struct Screen {
    policy: Option<Arc<crate::policy::Policy>>,
    record: Option<Arc<crate::record::Recorder>>,
    user: Arc<str>,
}

pub(super) fn screen_for(gateway: &Gateway, hub: &Hub, user: &Arc<str>) -> Option<Screen> {
    let policy = gateway.live().bot(&hub.bot)?.policy.clone();
    let record = gateway.record.clone();
    if policy.is_none() && record.is_none() {
        return None;
    }
    Some(Screen {
        policy,
        record,
        user: user.clone(),
    })
}

/// A page fetched by REST (catch-up, or polling while another replica holds the stream),
/// through the policy when the bot has one, like a frame from the socket.
pub(super) async fn relay_page(
    gateway: &Gateway,
    hub: &Hub,
    tracker: &mut Tracker,
    screen: Option<&Screen>,
    page: Utf8Bytes,
) {
    match screen {
        None => relay_text(gateway, hub, tracker, page),
        Some(screen) => Box::pin(relay_screened(gateway, hub, tracker, screen, page)).await,
    };
}

/// A frame with the bot's activities screened first (withheld ones out, replaced ones
/// swapped, the watermark kept) and recorded, then relayed as any other.
pub(super) async fn relay_screened(
    gateway: &Gateway,
    hub: &Hub,
    tracker: &mut Tracker,
    screen: &Screen,
    text: Utf8Bytes,
) -> bool {
    let subject = crate::policy::Subject {
        bot: &hub.bot,
        conversation: hub.conversation.as_str(),
        user: &screen.user,
    };
    let text = screen_frame(
        gateway,
        screen.policy.as_deref(),
        screen.record.as_deref(),
        subject,
        text,
    )
    .await;
    relay_text(gateway, hub, tracker, text)
}

/// A frame of the bot's activities as the user may see it: through the bot's policy
/// (withheld ones out, replaced ones swapped, the set's watermark kept, so the client
/// still moves past a withheld activity) and then into the record as delivered. Both
/// roads to a client use it, the hub's relay and the multimodal bridge, so a bot answer
/// cannot reach a user unscreened by choosing the socket it goes out on.
pub(super) async fn screen_frame(
    gateway: &Gateway,
    policy: Option<&crate::policy::Policy>,
    record: Option<&crate::record::Recorder>,
    subject: crate::policy::Subject<'_>,
    text: Utf8Bytes,
) -> Utf8Bytes {
    let screened = match policy {
        Some(policy) => {
            crate::policy::screen_set(policy, &gateway.metrics, subject, text.as_bytes())
                .await
                .and_then(|bytes| String::from_utf8(bytes).ok())
        }
        None => None,
    };
    let text = screened.map_or(text, Utf8Bytes::from);
    if let Some(record) = record
        && !text.is_empty()
    {
        // The frame as delivered; the record's writer keeps the bot's finals, each once.
        record.bot_set(subject, bytes::Bytes::from(text.clone()));
    }
    text
}

/// Whether the frame was a livestream's interim (the relay may then read the next frames
/// later, together, under `stream.chunk_interval`).
pub(super) fn relay_text(
    gateway: &Gateway,
    hub: &Hub,
    tracker: &mut Tracker,
    text: Utf8Bytes,
) -> bool {
    match tracker.observe(text.as_str()) {
        Observed::Keepalive => false,
        Observed::AllDuplicates { dropped } => {
            gateway.metrics.duplicates_dropped.inc_by(dropped as u64);
            hub.advance_watermark(tracker.watermark());
            false
        }
        Observed::Forward(forward) => {
            gateway
                .metrics
                .duplicates_dropped
                .inc_by(forward.dropped as u64);
            hub.relayed.inc_by(forward.activities.len() as u64);
            let text = match forward.rebuilt {
                Some(rebuilt) => Utf8Bytes::from(rebuilt),
                None => text,
            };
            let stream = forward.stream;
            let published = hub.publish(
                EventParts {
                    text,
                    watermark: forward.watermark,
                    activities: forward.activities,
                    stream,
                },
                tracker.watermark(),
            );
            if stream != StreamMark::None {
                gateway.metrics.streamed_answers.observe(&published);
            }
            matches!(stream, StreamMark::Interim { .. })
        }
    }
}
