//! `GET session/getsessionid`: the Direct Line session cookie, bound to the gateway's host.

use std::sync::Arc;

use http::{HeaderValue, Method, Request, Response, header};
use hyper::body::Incoming;

use super::context::RequestContext;
use crate::boxed_body::Body;
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
    let path = "/v3/directline/session/getsessionid";
    let credential = Credential::Token(&token.upstream_token);
    let timeout = ctx.config().timeouts.default;
    let cookie = request.headers().get(header::COOKIE).cloned();
    let reply = ctx
        .send_shaped(
            gateway,
            Method::GET,
            path,
            credential,
            timeout,
            |call| match cookie {
                Some(cookie) => call.header(header::COOKIE, cookie),
                None => call,
            },
        )
        .await?;
    let Answer::Streaming(response) = reply.answer else {
        return Err(GatewayError::internal(
            "the session answer was read before its cookies were taken",
        )
        .into());
    };
    let cookies: Vec<HeaderValue> = response
        .headers()
        .get_all(header::SET_COOKIE)
        .iter()
        .filter_map(strip_cookie_domain)
        .collect();
    // The session cookie goes to the client with Direct Line's answer, refusals included.
    let answer = Answer::Streaming(response);
    match ctx.pass_on(gateway, answer, token.upstream_token).await {
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
