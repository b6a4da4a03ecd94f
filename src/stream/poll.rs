//! Held polls (`[polling] hold`): `GET …/activities` answered from the conversation's hub,
//! for clients that cannot open a WebSocket (DLJS `webSocket: false`). A poll with nothing
//! new waits up to `hold` and is answered as soon as the hub publishes something, live
//! interims included (Direct Line's own REST interface drops them).
//!
//! POSITION
//! The answer's watermark is the gateway's own: sealed `{upstream watermark, hub, sequence}`.
//! On the replica whose hub made it, the next poll continues at that sequence (so interims
//! are not repeated); anywhere else, or once that hub is gone, it continues from the
//! upstream watermark inside, as a plain upstream watermark from a client does. So a poll
//! may land on any replica.
//!
//! WHERE AN ANSWER COMES FROM
//! - the hub's ring, when the position is in it (the common case once a hub is up);
//! - a hub this poll opens: its first upstream socket is dialled from a reconnect at the
//!   poll's watermark, so its ring starts right after it (with no watermark, the history is
//!   read by REST after the socket was asked for, so nothing falls between the two);
//! - otherwise Direct Line's REST history from the upstream watermark, with the hub used
//!   only to learn when something new arrived: every stored activity is then read by REST,
//!   so a hub that is behind or ahead of the client can neither lose nor double one.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::hub::{AttachError, Cursor, Event, Hub, Pending, PollFrom};
use super::link;
use super::relay::{self, FirstLink};
use crate::endpoint::ConversationId;
use crate::error::GatewayError;
use crate::gateway::Gateway;
use crate::rewrite::MAX_WATERMARK_LEN;
use crate::seal::{Purpose, Sealer};

/// What the gateway's poll watermark holds. Short names keep it short.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
struct PollMark {
    /// The upstream watermark of the newest stored activity the client has.
    #[serde(rename = "w", default, skip_serializing_if = "Option::is_none")]
    upstream: Option<String>,
    /// The hub's nonce and the sequence number to continue at, on the replica of that hub.
    #[serde(rename = "p", default, skip_serializing_if = "Option::is_none")]
    place: Option<(u64, u64)>,
}

/// Sealed values start with this; Direct Line's watermarks are decimal numbers.
const SEALED_PREFIX: &str = "dlgw1.";

impl PollMark {
    /// A client's watermark: the gateway's own, or a plain upstream one.
    fn read(sealer: &Sealer, watermark: Option<String>) -> Result<PollMark, GatewayError> {
        match watermark {
            Some(w) if w.starts_with(SEALED_PREFIX) => sealer
                .open(Purpose::PollWatermark, &w)
                .map_err(|_| GatewayError::InvalidQuery),
            upstream => Ok(PollMark {
                upstream,
                place: None,
            }),
        }
    }

    /// The watermark to give the client. A sealed value too long for a watermark (an
    /// unusually long upstream one) falls back to the upstream watermark itself.
    fn write(&self, sealer: &Sealer) -> Option<String> {
        let sealed = sealer.seal(Purpose::PollWatermark, self);
        if sealed.len() <= MAX_WATERMARK_LEN {
            Some(sealed)
        } else {
            self.upstream.clone()
        }
    }
}

/// The upstream watermark a client's watermark stands for (the gateway's own unsealed),
/// for a poll passed through to Direct Line.
pub fn upstream_watermark(
    sealer: &Sealer,
    watermark: Option<String>,
) -> Result<Option<String>, GatewayError> {
    PollMark::read(sealer, watermark).map(|mark| mark.upstream)
}

/// Serves one poll. `Ok(None)`: this poll is not held (no hub could be had for it); the
/// caller passes it through to Direct Line as without `[polling]`.
pub async fn serve(
    gateway: &Arc<Gateway>,
    bot: &Arc<str>,
    conversation: &ConversationId,
    client_ip: IpAddr,
    watermark: Option<String>,
    upstream_token: &str,
    user: &str,
) -> Result<Option<String>, GatewayError> {
    let (polling, sealer) = {
        let live = gateway.live();
        (live.config.polling.clone(), live.sealer.clone())
    };
    let mark = PollMark::read(&sealer, watermark)?;
    let _held = gateway
        .polls
        .hold(&polling, bot, conversation, client_ip)
        .map_err(|why| {
            gateway
                .metrics
                .polls_refused
                .with_label_values(&[why.as_str()])
                .inc();
            GatewayError::TooManyPolls
        })?;
    let started = Source::find(
        gateway,
        bot,
        conversation,
        &mark,
        &polling,
        upstream_token,
        user,
    )
    .await;
    let answer = match started {
        Start::Answer(answer) => answer,
        Start::Passthrough => {
            gateway
                .metrics
                .polls
                .with_label_values(&["passthrough"])
                .inc();
            return Ok(None);
        }
        Start::Hold(hub, cursor, source) => {
            let held = hold(
                gateway,
                &hub,
                cursor,
                source,
                &mark,
                polling.hold,
                upstream_token,
            )
            .await;
            hub.detach();
            match held {
                Some(answer) => answer,
                None => return Ok(None),
            }
        }
    };
    let result = if answer.activities.is_empty() {
        "empty"
    } else {
        "activities"
    };
    gateway.metrics.polls.with_label_values(&[result]).inc();
    Ok(Some(answer.body(&sealer)))
}

/// Where a held poll's stored activities come from.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Source {
    /// The hub's ring, from the poll's cursor.
    Ring,
    /// Direct Line's REST history; the hub only says when to read it.
    Rest,
}

enum Start {
    Answer(Answer),
    Hold(Arc<Hub>, Cursor, Source),
    Passthrough,
}

impl Source {
    async fn find(
        gateway: &Arc<Gateway>,
        bot: &Arc<str>,
        conversation: &ConversationId,
        mark: &PollMark,
        polling: &crate::config::PollingConfig,
        upstream_token: &str,
        user: &str,
    ) -> Start {
        let upstream = mark.upstream.as_deref();
        // Twice at most: a hub may retire between the look-up and the attach.
        for _ in 0..2 {
            if let Some(hub) = gateway.hubs.get(bot, conversation) {
                let from = match (mark.place, upstream) {
                    (Some((nonce, seq)), _) if nonce == hub.nonce => Some(PollFrom::Seq(seq)),
                    (_, Some(w)) => Some(PollFrom::Watermark(w)),
                    _ => None,
                };
                let attached = match from {
                    Some(from) => hub.attach_poll(from),
                    None => Err(AttachError::NotBuffered),
                };
                match attached {
                    Ok(cursor) => return Start::Hold(hub, cursor, Source::Ring),
                    Err(AttachError::Retired) => continue,
                    Err(AttachError::NotBuffered) => {}
                }
                // Attach first, so what arrives during the REST read wakes the hold.
                let Ok(cursor) = hub.attach_poll(PollFrom::Head) else {
                    continue;
                };
                return match rest_history(gateway, bot, conversation, upstream, upstream_token)
                    .await
                {
                    Some(answer) if !answer.activities.is_empty() => {
                        hub.detach();
                        Start::Answer(answer)
                    }
                    Some(_) => Start::Hold(hub, cursor, Source::Rest),
                    None => {
                        hub.detach();
                        Start::Passthrough
                    }
                };
            }
            let Some(slot) = gateway.polls.open_hub(polling.max_hubs) else {
                gateway
                    .metrics
                    .polls_refused
                    .with_label_values(&["hubs"])
                    .inc();
                return Start::Passthrough;
            };
            let mut token = upstream_token.to_owned();
            let Ok(stream_url) =
                link::fetch_stream_url(gateway, bot, conversation, upstream, &mut token, None)
                    .await
            else {
                return Start::Passthrough;
            };
            let watermark: Option<Arc<str>> = upstream.map(Arc::from);
            let (hub, created) = gateway.hubs.get_or_create(
                &gateway.metrics,
                &gateway.live().config.stream,
                bot,
                conversation,
                watermark.as_ref(),
                &token,
            );
            if !created {
                // Another request opened it meanwhile: use that one.
                continue;
            }
            let _ = hub.opened_by_poll.set(slot);
            let Ok(cursor) = hub.attach_poll(PollFrom::Start) else {
                continue;
            };
            tokio::spawn(relay::run(
                gateway.clone(),
                hub.clone(),
                FirstLink {
                    stream_url: Some(stream_url),
                    watermark,
                    from_start: false,
                    user: Arc::from(user),
                },
            ));
            if upstream.is_none() {
                // The socket replays only what comes after it was asked for: the history
                // before that is read now, after it, so nothing falls between the two.
                match rest_history(gateway, bot, conversation, None, upstream_token).await {
                    Some(answer) if !answer.activities.is_empty() => {
                        hub.detach();
                        return Start::Answer(answer);
                    }
                    Some(_) => {}
                    None => {
                        hub.detach();
                        return Start::Passthrough;
                    }
                }
            }
            return Start::Hold(hub, cursor, Source::Ring);
        }
        Start::Passthrough
    }
}

/// Waits on the hub until something new arrives or `hold` passes. `None`: the hub could
/// not serve this poll after all (it lost frames the poll needed and REST failed).
async fn hold(
    gateway: &Gateway,
    hub: &Hub,
    mut cursor: Cursor,
    source: Source,
    mark: &PollMark,
    hold: Duration,
    upstream_token: &str,
) -> Option<Answer> {
    let deadline = tokio::time::Instant::now() + hold;
    let mut published = hub.subscribe();
    let mut batch: Vec<Arc<Event>> = Vec::new();
    let mut events: Vec<Arc<Event>> = Vec::new();
    loop {
        published.borrow_and_update();
        let state = hub.pending(&mut cursor, &mut batch, usize::MAX);
        let lagged = matches!(state, Pending::Lagged);
        let closed = matches!(state, Pending::Closed(_));
        events.append(&mut batch);
        let stored_arrived = events.iter().any(|e| e.watermark.is_some());
        if lagged || (source == Source::Rest && stored_arrived) {
            // The ring let go of frames this poll needed, or stored activities are read by
            // REST for this poll: the history answers, with the interims seen so far.
            let mut answer = rest_history(
                gateway,
                &hub.bot,
                &hub.conversation,
                mark.upstream.as_deref(),
                upstream_token,
            )
            .await?;
            answer.add_interims(&events);
            return Some(answer);
        }
        if !events.is_empty() || closed {
            break;
        }
        tokio::select! {
            changed = published.changed() => {
                if changed.is_err() {
                    break;
                }
            }
            _ = tokio::time::sleep_until(deadline) => break,
        }
    }
    let mut answer = Answer {
        activities: Vec::new(),
        mark: PollMark {
            upstream: mark.upstream.clone(),
            place: None,
        },
    };
    if source == Source::Ring {
        for event in &events {
            if let Some(w) = &event.watermark {
                answer.mark.upstream = Some(w.to_string());
            }
        }
        answer.mark.place = Some((hub.nonce, cursor.next_seq));
        answer.add_events(&events);
    } else {
        answer.add_interims(&events);
    }
    Some(answer)
}

/// One poll's answer: activities (raw JSON, in order) and the position after them.
struct Answer {
    activities: Vec<String>,
    mark: PollMark,
}

impl Answer {
    /// Stored activities and the interims worth sending, from hub events in order.
    fn add_events(&mut self, events: &[Arc<Event>]) {
        let spans: Vec<&str> = events
            .iter()
            .flat_map(|event| {
                let text = event.text.as_str();
                event
                    .activities
                    .iter()
                    .filter_map(move |(_, range)| text.get(range.clone()))
            })
            .collect();
        self.push_newest(&spans);
    }

    /// Only the live-only (interim, typing) activities of `events`: stored ones came by REST.
    fn add_interims(&mut self, events: &[Arc<Event>]) {
        let live: Vec<Arc<Event>> = events
            .iter()
            .filter(|e| e.watermark.is_none())
            .cloned()
            .collect();
        self.add_events(&live);
    }

    /// Appends `spans` (activities' JSON), keeping of each livestream only its newest
    /// interim, and none once its final is among them: an interim's text replaces the
    /// previous one, so a poll that missed some needs only the last (ARCHITECTURE §14).
    fn push_newest(&mut self, spans: &[&str]) {
        let infos: Vec<Option<StreamInfo>> =
            spans.iter().map(|text| StreamInfo::of(text)).collect();
        let mut newest: std::collections::HashMap<&str, (usize, u64)> = Default::default();
        let mut finished: std::collections::HashSet<&str> = Default::default();
        for (index, info) in infos.iter().enumerate() {
            let Some(info) = info else { continue };
            if info.is_final {
                finished.insert(info.stream.as_str());
            } else {
                let entry = newest
                    .entry(info.stream.as_str())
                    .or_insert((index, info.sequence));
                // Never an older chunk after a newer one.
                if info.sequence >= entry.1 {
                    *entry = (index, info.sequence);
                }
            }
        }
        for (index, text) in spans.iter().enumerate() {
            let keep = match &infos[index] {
                Some(info) if !info.is_final => {
                    !finished.contains(info.stream.as_str())
                        && newest
                            .get(info.stream.as_str())
                            .is_some_and(|(i, _)| *i == index)
                }
                _ => true,
            };
            if keep {
                self.activities.push((*text).to_owned());
            }
        }
    }

    fn body(&self, sealer: &Sealer) -> String {
        let watermark = self.mark.write(sealer);
        let size: usize = self.activities.iter().map(|a| a.len() + 1).sum();
        let mut body = String::with_capacity(size + 64 + watermark.as_ref().map_or(0, |w| w.len()));
        body.push_str("{\"activities\":[");
        for (index, activity) in self.activities.iter().enumerate() {
            if index > 0 {
                body.push(',');
            }
            body.push_str(activity);
        }
        body.push(']');
        if let Some(w) = watermark {
            body.push_str(",\"watermark\":");
            // A string serialises into valid JSON in every case.
            body.push_str(&serde_json::to_string(&w).unwrap_or_else(|_| "null".to_owned()));
        }
        body.push('}');
        body
    }
}

/// A livestream activity's place in its stream (the `streaminfo` entity or `channelData`).
struct StreamInfo {
    /// The stream's id: `streamId`, or for the first interim its own id.
    stream: String,
    sequence: u64,
    is_final: bool,
}

impl StreamInfo {
    fn of(text: &str) -> Option<StreamInfo> {
        // Cheap test first: most activities are not part of a livestream.
        if !text.contains("streamType") {
            return None;
        }
        let activity: Value = serde_json::from_str(text).ok()?;
        let fields = activity
            .get("entities")
            .and_then(Value::as_array)
            .and_then(|entities| {
                entities
                    .iter()
                    .find(|e| e.get("type").and_then(Value::as_str) == Some("streaminfo"))
            })
            .or_else(|| activity.get("channelData"))?;
        let kind = fields.get("streamType").and_then(Value::as_str)?;
        let stream = fields
            .get("streamId")
            .and_then(Value::as_str)
            .or_else(|| activity.get("id").and_then(Value::as_str))?
            .to_owned();
        let sequence = match fields.get("streamSequence") {
            Some(Value::Number(n)) => n.as_u64().unwrap_or(0),
            Some(Value::String(s)) => s.parse().unwrap_or(0),
            _ => 0,
        };
        Some(StreamInfo {
            stream,
            sequence,
            is_final: kind == "final",
        })
    }
}

/// Direct Line's history from `watermark` (every page), as a poll answer; `None` when it
/// could not be read (the caller then passes the poll through, and Direct Line's own
/// answer, error included, reaches the client).
async fn rest_history(
    gateway: &Gateway,
    bot: &str,
    conversation: &ConversationId,
    watermark: Option<&str>,
    upstream_token: &str,
) -> Option<Answer> {
    let (pages, _) = link::catch_up(gateway, bot, conversation, watermark, upstream_token)
        .await
        .ok()?;
    let mut answer = Answer {
        activities: Vec::new(),
        mark: PollMark {
            upstream: watermark.map(str::to_owned),
            place: None,
        },
    };
    for page in pages {
        let set: Value = serde_json::from_str(page.as_str()).ok()?;
        if let Some(activities) = set.get("activities").and_then(Value::as_array) {
            for activity in activities {
                answer.activities.push(activity.to_string());
            }
        }
        if let Some(w) = set.get("watermark").and_then(Value::as_str) {
            answer.mark.upstream = Some(w.to_owned());
        }
    }
    Some(answer)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sealer() -> Sealer {
        Sealer::new("poll-test-key-0123456789abcdef0123456789", &[]).unwrap()
    }

    #[test]
    fn a_poll_watermark_round_trips_and_plain_ones_stay_plain() {
        let sealer = sealer();
        let mark = PollMark {
            upstream: Some("42".into()),
            place: Some((7, 9)),
        };
        let written = mark.write(&sealer).unwrap();
        assert!(written.len() <= MAX_WATERMARK_LEN);
        assert_eq!(PollMark::read(&sealer, Some(written)).unwrap(), mark);
        let plain = PollMark::read(&sealer, Some("42".into())).unwrap();
        assert_eq!(plain.upstream.as_deref(), Some("42"));
        assert!(plain.place.is_none());
        let forged = format!("{SEALED_PREFIX}AAAA");
        assert!(PollMark::read(&sealer, Some(forged)).is_err());
        // A token is sealed for another purpose: it is no watermark.
        let other = sealer.seal(Purpose::StreamTicket, &mark);
        assert!(PollMark::read(&sealer, Some(other)).is_err());
    }

    #[test]
    fn a_long_upstream_watermark_is_given_back_plain() {
        let mark = PollMark {
            upstream: Some("9".repeat(240)),
            place: Some((1, 2)),
        };
        assert_eq!(mark.write(&sealer()), mark.upstream);
    }

    fn interim(id: &str, stream: Option<&str>, sequence: u64) -> String {
        let stream_id = stream.map_or(String::new(), |s| format!(",\"streamId\":\"{s}\""));
        format!(
            r#"{{"type":"typing","id":"{id}","text":"t{sequence}","entities":[{{"type":"streaminfo","streamType":"streaming","streamSequence":{sequence}{stream_id}}}]}}"#
        )
    }

    #[test]
    fn only_the_newest_interim_of_an_open_stream_and_none_of_a_finished_one() {
        let first = interim("s1", None, 1);
        let second = interim("x2", Some("s1"), 2);
        let third = interim("x3", Some("s1"), 3);
        let other = r#"{"type":"typing","id":"o1","channelData":{"streamType":"informative","streamSequence":1}}"#;
        let message = r#"{"type":"message","id":"m1","text":"hi"}"#;
        let mut answer = Answer {
            activities: Vec::new(),
            mark: PollMark::default(),
        };
        answer.push_newest(&[message, &first, &third, &second, other]);
        assert_eq!(answer.activities, [message, third.as_str(), other]);
        let final_one = r#"{"type":"message","id":"f","text":"done","entities":[{"type":"streaminfo","streamType":"final","streamId":"s1"}]}"#;
        let mut answer = Answer {
            activities: Vec::new(),
            mark: PollMark::default(),
        };
        answer.push_newest(&[&first, &second, final_one]);
        assert_eq!(answer.activities, [final_one]);
    }
}
