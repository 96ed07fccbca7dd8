//! Polling waits with failure messages that say what was last seen.
use std::fmt::Debug;
use std::future::Future;
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use kube::Resource;
use kube::api::Api;
use serde::de::DeserializeOwned;

/// The outcome of one check in [`wait_for`].
#[derive(Debug)]
pub enum Check<T> {
    /// The condition holds; `wait_for` returns this value.
    Done(T),
    /// Not yet; the string describes what was observed (shown on timeout).
    Pending(String),
}

/// Poll `check` every 250 ms until it returns [`Check::Done`] or `timeout` passes.
///
/// An `Err` from `check` counts as "not yet" (API servers hiccup); its text is
/// kept as the last observation. On timeout the error names `what`, the time
/// waited and the last observation.
pub async fn wait_for<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<Check<T>>>,
{
    let start = Instant::now();
    let mut last: String;
    loop {
        match check().await {
            Ok(Check::Done(v)) => return Ok(v),
            Ok(Check::Pending(seen)) => last = seen,
            Err(e) => last = format!("error: {e:#}"),
        }
        if start.elapsed() >= timeout {
            bail!(
                "timed out after {:.1}s waiting for {what}; last observed: {last}",
                start.elapsed().as_secs_f64()
            );
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Wait until the object `name` exists and `cond` holds for it; returns it.
/// On timeout the message carries the object's last `status` (or "not found").
pub async fn wait_for_object<K, F>(
    api: &Api<K>,
    name: &str,
    timeout: Duration,
    cond: F,
) -> Result<K>
where
    K: Resource + Clone + DeserializeOwned + Debug + serde::Serialize,
    K::DynamicType: Default,
    F: Fn(&K) -> bool,
{
    let kind = K::kind(&K::DynamicType::default()).to_string();
    wait_for(&format!("{kind} {name}"), timeout, || async {
        match api.get_opt(name).await? {
            None => Ok(Check::Pending("not found".into())),
            Some(obj) if cond(&obj) => Ok(Check::Done(obj)),
            Some(obj) => {
                let v = serde_json::to_value(&obj)?;
                let status = v.get("status").cloned().unwrap_or(serde_json::Value::Null);
                Ok(Check::Pending(format!("status: {status}")))
            }
        }
    })
    .await
}

/// Wait until `name` no longer exists. A timeout names what held it: its finalizers and status.
pub async fn wait_for_deletion<K>(api: &Api<K>, name: &str, timeout: Duration) -> Result<()>
where
    K: Resource + Clone + DeserializeOwned + serde::Serialize + Debug,
    K::DynamicType: Default,
{
    let kind = K::kind(&K::DynamicType::default()).to_string();
    wait_for(&format!("deletion of {kind} {name}"), timeout, || async {
        Ok(match api.get_opt(name).await? {
            None => Check::Done(()),
            Some(obj) => {
                let status = serde_json::to_value(&obj)?
                    .get("status")
                    .cloned()
                    .unwrap_or(serde_json::Value::Null);
                let meta = obj.meta();
                Check::Pending(format!(
                    "still exists (deleting: {}, finalizers: {:?}, status: {status})",
                    meta.deletion_timestamp.is_some(),
                    meta.finalizers.as_deref().unwrap_or_default(),
                ))
            }
        })
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn timeout_message_names_the_wait_and_the_last_observation() {
        let mut n = 0;
        let err = wait_for("the answer", Duration::from_millis(600), || {
            n += 1;
            let seen = n;
            async move { Ok(Check::<()>::Pending(format!("saw {seen}"))) }
        })
        .await
        .unwrap_err()
        .to_string();
        assert!(err.starts_with("timed out after "), "{err}");
        assert!(
            err.contains("waiting for the answer; last observed: saw "),
            "{err}"
        );
    }

    #[tokio::test]
    async fn done_returns_the_value_and_errors_count_as_pending() {
        let mut n = 0;
        let v = wait_for("three", Duration::from_secs(5), || {
            n += 1;
            let k = n;
            async move {
                match k {
                    1 => anyhow::bail!("flaky"),
                    2 => Ok(Check::Pending("two".into())),
                    _ => Ok(Check::Done(k)),
                }
            }
        })
        .await
        .unwrap();
        assert_eq!(v, 3);
    }
}
