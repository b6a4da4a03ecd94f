//! `GET session/getsessionid`: the Direct Line session cookie, bound to the gateway's host.

use std::sync::Arc;

use http::{HeaderValue, Method, Request, Response, header};
use hyper::body::Incoming;

use super::answer::{credential_needles, passthrough};
use super::context::RequestContext;
use crate::body::Body;
use crate::error::{GatewayError, Refusal};
use crate::gateway::Gateway;
use crate::seal::ClientToken;
use crate::upstream::call::{Answer, Credential};

pub async fn session_id(
    gateway: &Arc<Gateway>,
    request: Request<Incoming>,
    ctx: &mut RequestContext,
    token: ClientToken,
) -> Result<Response<Body>, Refusal> {
    let timeout = ctx.live.config.timeouts.default;
    let mut call = ctx.upstream(
        Method::GET,
        "/v3/directline/session/getsessionid",
        Credential::Token(&token.upstream_token),
        timeout,
    );
    if let Some(cookie) = request.headers().get(header::COOKIE) {
        call = call.header(header::COOKIE, cookie.clone());
    }
    let reply = call.send(&gateway.metrics).await?;
    ctx.saw(&reply);
    let Answer::Streaming(response) = reply.answer else {
        return Err(GatewayError::Internal.into());
    };
    let cookies: Vec<HeaderValue> = response
        .headers()
        .get_all(header::SET_COOKIE)
        .iter()
        .filter_map(strip_cookie_domain)
        .collect();
    let needles = credential_needles(ctx, token.upstream_token);
    // The session cookie goes to the client with Direct Line's answer, refusals included.
    match passthrough(gateway, Answer::Streaming(response), ctx, timeout, needles).await {
        Ok(mut response) => {
            for cookie in cookies {
                response.headers_mut().append(header::SET_COOKIE, cookie);
            }
            Ok(response)
        }
        Err(Refusal::Upstream(mut refused)) => {
            for cookie in cookies {
                refused.headers.append(header::SET_COOKIE, cookie);
            }
            Err(Refusal::Upstream(refused))
        }
        Err(refusal) => Err(refusal),
    }
}

/// A `Set-Cookie` from upstream without its `Domain` attribute, so the browser binds it to
/// the gateway's host (the one the client talks to) rather than refusing it.
fn strip_cookie_domain(value: &HeaderValue) -> Option<HeaderValue> {
    let text = value.to_str().ok()?;
    let kept: Vec<&str> = text
        .split(';')
        .filter(|part| {
            !part
                .trim_start()
                .to_ascii_lowercase()
                .starts_with("domain=")
        })
        .collect();
    HeaderValue::from_str(&kept.join(";")).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cookie_domain_is_dropped() {
        let value = HeaderValue::from_static("sid=abc; Domain=.botframework.com; Path=/; Secure");
        assert_eq!(
            strip_cookie_domain(&value).unwrap(),
            "sid=abc; Path=/; Secure"
        );
    }
}
