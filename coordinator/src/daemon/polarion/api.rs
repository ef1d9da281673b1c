//! Polarion's importers over HTTP: the upload (`POST {url}/import/{kind}`, multipart, the file in the
//! part named `file`), the queue (`GET {url}/import/{kind}-queue?jobIds=…`, paged) and a job's log
//! (`GET {url}/import/{kind}-log?jobId=N`). The password or token goes in a header only, never in an
//! error.

use std::time::Duration;

use reqwest::header::{HeaderValue, ACCEPT, AUTHORIZATION};
use serde_json::Value;

use super::config::PolarionAuth;

const REQUEST_TIMEOUT: Duration = Duration::from_secs(120);

#[derive(Debug, thiserror::Error)]
pub enum PolarionError {
    /// Try again later (Polarion down, a 5xx, an answer that is not what an importer says, a 401).
    #[error("{0}")]
    Retry(String),
    /// The importer refused the file itself (`error-message`): sending it again will not help.
    #[error("{0}")]
    Refused(String),
}

pub struct PolarionApi {
    client: reqwest::Client,
    url: String,
    auth: PolarionAuth,
}

/// A job as the queue lists it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Job {
    pub id: u64,
    /// READY, RUNNING, SUCCESS or FAILED.
    pub status: String,
}

fn short(text: &str) -> String {
    let flat: String = text.split_whitespace().collect::<Vec<_>>().join(" ");
    crate::core::github::truncate(&flat, 160)
}

impl PolarionApi {
    pub fn new(url: &str, auth: PolarionAuth) -> Result<PolarionApi, String> {
        let client = reqwest::Client::builder()
            .timeout(REQUEST_TIMEOUT)
            .user_agent(concat!("polarizer/", env!("CARGO_PKG_VERSION")))
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|err| format!("cannot make an HTTP client: {err}"))?;
        Ok(PolarionApi {
            client,
            url: url.to_string(),
            auth,
        })
    }

    fn authorized(&self, request: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        match &self.auth {
            PolarionAuth::None => request,
            PolarionAuth::Basic { user, password } => request.basic_auth(user, Some(password)),
            PolarionAuth::Token(token) => match HeaderValue::from_str(&format!("Bearer {token}")) {
                Ok(mut value) => {
                    value.set_sensitive(true);
                    request.header(AUTHORIZATION, value)
                }
                Err(_) => request,
            },
        }
    }

    /// Sends `request`; the body of a 2xx answer, else why not.
    async fn send(
        &self,
        what: &str,
        request: reqwest::RequestBuilder,
    ) -> Result<String, PolarionError> {
        let response = self.authorized(request).send().await.map_err(|err| {
            PolarionError::Retry(format!(
                "{what}: {}",
                if err.is_timeout() {
                    "timed out"
                } else if err.is_connect() {
                    "cannot connect"
                } else {
                    "request failed"
                }
            ))
        })?;
        let status = response.status();
        let body = response.text().await.unwrap_or_default();
        if status == reqwest::StatusCode::UNAUTHORIZED || status == reqwest::StatusCode::FORBIDDEN {
            return Err(PolarionError::Retry(format!(
                "{what}: {status}: Polarion refused the credentials (polarion.user with password_file, or token_file)"
            )));
        }
        if !status.is_success() {
            return Err(PolarionError::Retry(format!(
                "{what}: {status}: {}",
                short(&body)
            )));
        }
        Ok(body)
    }

    /// Uploads a file to `/import/{kind}`; answers Polarion's job ids.
    pub async fn upload(
        &self,
        kind: &str,
        name: &str,
        file: Vec<u8>,
    ) -> Result<Vec<u64>, PolarionError> {
        let part = reqwest::multipart::Part::bytes(file)
            .file_name(name.to_string())
            .mime_str("application/xml")
            .map_err(|err| PolarionError::Retry(err.to_string()))?;
        let form = reqwest::multipart::Form::new().part("file", part);
        let what = format!("upload to {}/import/{kind}", self.url);
        let body = self
            .send(
                &what,
                self.client
                    .post(format!("{}/import/{kind}", self.url))
                    .header(ACCEPT, "application/json")
                    .multipart(form),
            )
            .await?;
        let answer: Value = serde_json::from_str(&body).map_err(|_| {
            PolarionError::Retry(format!(
                "{what}: the answer is not JSON (a login page or a proxy's? check polarion.url): {}",
                short(&body)
            ))
        })?;
        upload_job_ids(&answer, name).map_err(|message| {
            if message.starts_with("refused") {
                PolarionError::Refused(format!("{what}: {message}"))
            } else {
                PolarionError::Retry(format!("{what}: {message}"))
            }
        })
    }

    /// The jobs among `ids`, from every page of the queue.
    pub async fn queue(&self, kind: &str, ids: &[u64]) -> Result<Vec<Job>, PolarionError> {
        let list: Vec<String> = ids.iter().map(u64::to_string).collect();
        let mut jobs = Vec::new();
        let mut page = 1u64;
        loop {
            let what = format!("the {kind} queue");
            let body = self
                .send(
                    &what,
                    self.client
                        .get(format!("{}/import/{kind}-queue", self.url))
                        .query(&[
                            ("jobIds", list.join(",")),
                            ("currentPage", page.to_string()),
                        ])
                        .header(ACCEPT, "application/json"),
                )
                .await?;
            let answer: Value = serde_json::from_str(&body).map_err(|_| {
                PolarionError::Retry(format!("{what}: the answer is not JSON: {}", short(&body)))
            })?;
            for job in answer["jobs"].as_array().into_iter().flatten() {
                if let (Some(id), Some(status)) = (job["id"].as_u64(), job["status"].as_str()) {
                    if ids.contains(&id) {
                        jobs.push(Job {
                            id,
                            status: status.to_string(),
                        });
                    }
                }
            }
            let max_pages = answer["maxPages"].as_u64().unwrap_or(1);
            if page >= max_pages || page >= 1000 {
                return Ok(jobs);
            }
            page += 1;
        }
    }

    /// A job's log, as text.
    pub async fn log(&self, kind: &str, job: u64) -> Result<String, PolarionError> {
        self.send(
            &format!("the log of job {job}"),
            self.client
                .get(format!("{}/import/{kind}-log", self.url))
                .query(&[("jobId", job.to_string()), ("download", String::new())]),
        )
        .await
    }
}

/// The job ids of an upload's answer: `files.<name>.job-ids` (importer 2.0.12 on), or the older single
/// `job-id`; a missing list, `[0]` or an `error-message` means the upload was refused.
pub fn upload_job_ids(answer: &Value, name: &str) -> Result<Vec<u64>, String> {
    let file = answer
        .get("files")
        .and_then(|files| {
            files
                .get(name)
                .or_else(|| files.as_object()?.values().next())
        })
        .unwrap_or(answer);
    if let Some(message) = file
        .get("error-message")
        .or_else(|| answer.get("error-message"))
        .and_then(Value::as_str)
    {
        return Err(format!("refused: {}", short(message)));
    }
    let ids: Vec<u64> = match file.get("job-ids") {
        Some(Value::Array(ids)) => ids.iter().filter_map(Value::as_u64).collect(),
        _ => file
            .get("job-id")
            .and_then(Value::as_u64)
            .into_iter()
            .collect(),
    };
    if ids.is_empty() || ids.contains(&0) {
        return Err(format!(
            "refused: no job id in the answer: {}",
            short(&answer.to_string())
        ));
    }
    Ok(ids)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn job_ids_come_from_either_answer_shape() {
        let new = json!({"files": {"run.xml": {"job-ids": [243422, 243423]}}});
        assert_eq!(
            upload_job_ids(&new, "run.xml").unwrap(),
            vec![243422, 243423]
        );
        let old = json!({"files": {"run.xml": {"job-id": 7}}});
        assert_eq!(upload_job_ids(&old, "run.xml").unwrap(), vec![7]);
        let refused = json!({"files": {"run.xml": {"error-message": "cvc-complex-type.2.4.a: Invalid content"}}});
        assert!(upload_job_ids(&refused, "run.xml")
            .unwrap_err()
            .contains("cvc-complex-type"));
        assert!(
            upload_job_ids(&json!({"files": {"run.xml": {"job-ids": [0]}}}), "run.xml").is_err()
        );
    }
}
