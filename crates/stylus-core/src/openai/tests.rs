use std::time::{Duration, Instant};

use serde_json::json;

use super::testing::{StubReply, StubServer};
use super::*;

/// A config for the stub with fast retries, so tests take milliseconds.
fn config(server: &StubServer) -> OpenAiConfig {
    OpenAiConfig {
        max_retries: 3,
        initial_backoff_ms: 1,
        max_backoff_ms: 5,
        timeout_secs: 5.0,
        ..OpenAiConfig::new(server.base_url(), "stub-model")
    }
}

fn schema_request() -> ChatRequest {
    ChatRequest {
        messages: vec![
            ChatMessage::system("answer in JSON"),
            ChatMessage::user("hi"),
        ],
        schema: Some(JsonSchema {
            name: "answer".to_string(),
            schema: json!({"type": "object", "properties": {"a": {"type": "integer"}},
                "required": ["a"], "additionalProperties": false}),
        }),
        temperature: Some(0.0),
    }
}

#[tokio::test]
async fn chat_posts_model_messages_schema_and_bearer_key_from_env() {
    let server = StubServer::sequence(vec![StubReply::chat("{\"a\": 1}")]).await;
    // Cargo sets CARGO_PKG_NAME for test processes: a variable that is surely set, without
    // mutating the environment.
    let client = OpenAiClient::new(OpenAiConfig {
        api_key_env: Some("CARGO_PKG_NAME".to_string()),
        ..config(&server)
    })
    .unwrap();
    let reply = client.chat(&schema_request()).await.unwrap();
    assert_eq!(reply.content, "{\"a\": 1}");
    assert_eq!(reply.format, ResponseFormat::JsonSchema);
    assert_eq!(reply.finish_reason.as_deref(), Some("stop"));

    let requests = server.requests();
    assert_eq!(requests.len(), 1);
    let request = &requests[0];
    assert_eq!(request.method, "POST");
    assert_eq!(request.path, "/v1/chat/completions");
    assert_eq!(request.header("authorization"), Some("Bearer stylus-core"));
    let body = request.json();
    assert_eq!(body["model"], "stub-model");
    assert_eq!(body["temperature"], 0.0);
    assert_eq!(
        body["messages"][0],
        json!({"role": "system", "content": "answer in JSON"})
    );
    assert_eq!(body["response_format"]["type"], "json_schema");
    assert_eq!(body["response_format"]["json_schema"]["strict"], true);
    assert_eq!(body["response_format"]["json_schema"]["name"], "answer");
}

#[tokio::test]
async fn missing_key_variable_and_bad_config_are_errors() {
    let err = OpenAiClient::new(OpenAiConfig {
        api_key_env: Some("STYLUS_TEST_VARIABLE_THAT_IS_NEVER_SET".to_string()),
        ..OpenAiConfig::new("http://127.0.0.1:1/v1", "m")
    })
    .unwrap_err();
    assert!(
        err.to_string()
            .contains("STYLUS_TEST_VARIABLE_THAT_IS_NEVER_SET"),
        "{err}"
    );
    assert!(OpenAiClient::new(OpenAiConfig::new("ftp://x/v1", "m")).is_err());
    assert!(OpenAiClient::new(OpenAiConfig::new("not a url", "m")).is_err());
    assert!(OpenAiClient::new(OpenAiConfig::new("http://x/v1", " ")).is_err());
    let no_permits = OpenAiConfig {
        max_concurrency: 0,
        ..OpenAiConfig::new("http://x/v1", "m")
    };
    assert!(OpenAiClient::new(no_permits).is_err());
}

#[tokio::test]
async fn debug_output_never_shows_the_key() {
    let server = StubServer::sequence(vec![StubReply::chat("{}")]).await;
    let client = OpenAiClient::new(OpenAiConfig {
        api_key_env: Some("CARGO_PKG_NAME".to_string()),
        ..config(&server)
    })
    .unwrap();
    let shown = format!("{client:?}");
    assert!(!shown.contains("stylus-core"), "{shown}");
    assert!(shown.contains("has_api_key: true"), "{shown}");
}

#[tokio::test]
async fn rejected_json_schema_falls_back_to_json_object_and_is_remembered() {
    let server = StubServer::start(|_, request| {
        if request.json()["response_format"]["type"] == "json_schema" {
            StubReply::error(400, "response_format json_schema is not supported")
        } else {
            StubReply::chat("{\"a\": 2}")
        }
    })
    .await;
    let client = OpenAiClient::new(config(&server)).unwrap();
    let reply = client.chat(&schema_request()).await.unwrap();
    assert_eq!(reply.format, ResponseFormat::JsonObject);
    let formats: Vec<_> = server
        .requests()
        .iter()
        .map(|r| r.json()["response_format"]["type"].clone())
        .collect();
    assert_eq!(formats, vec![json!("json_schema"), json!("json_object")]);

    // The next call goes straight to json_object.
    client.chat(&schema_request()).await.unwrap();
    assert_eq!(server.request_count(), 3);
    assert_eq!(
        server.requests()[2].json()["response_format"]["type"],
        "json_object"
    );
}

#[tokio::test]
async fn rejected_json_object_falls_back_to_plain_text() {
    let server = StubServer::start(|_, request| {
        if request.json().get("response_format").is_some() {
            StubReply::error(400, "unknown field response_format")
        } else {
            StubReply::chat("{\"a\": 3}")
        }
    })
    .await;
    let client = OpenAiClient::new(config(&server)).unwrap();
    let reply = client.chat(&schema_request()).await.unwrap();
    assert_eq!(reply.format, ResponseFormat::Text);
    assert_eq!(server.request_count(), 3);
}

#[tokio::test]
async fn a_400_without_response_format_is_an_error_with_the_servers_message() {
    let server = StubServer::sequence(vec![StubReply::error(400, "context too long")]).await;
    let client = OpenAiClient::new(config(&server)).unwrap();
    let request = ChatRequest {
        schema: None,
        ..schema_request()
    };
    let err = client.chat(&request).await.unwrap_err();
    match &err {
        StylusError::Http {
            url,
            status,
            message,
            ..
        } => {
            assert!(url.ends_with("/v1/chat/completions"), "{url}");
            assert_eq!(*status, Some(400));
            assert!(message.contains("context too long"), "{message}");
        }
        other => panic!("expected an HTTP error, got {other:?}"),
    }
    assert_eq!(server.request_count(), 1, "400 is not retried");
}

#[tokio::test]
async fn retries_429_then_succeeds_and_honours_retry_after() {
    let server = StubServer::sequence(vec![
        StubReply::error(429, "slow down").with_header("retry-after-ms", "300"),
        StubReply::chat("{\"a\": 4}"),
    ])
    .await;
    let client = OpenAiClient::new(config(&server)).unwrap();
    let started = Instant::now();
    let reply = client.chat(&schema_request()).await.unwrap();
    assert_eq!(reply.content, "{\"a\": 4}");
    assert_eq!(server.request_count(), 2);
    // The regular backoff here is at most 5 ms: the wait came from the header.
    assert!(
        started.elapsed() >= Duration::from_millis(300),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn retry_after_in_seconds_is_capped_by_max_retry_after() {
    let server = StubServer::sequence(vec![
        StubReply::error(503, "busy").with_header("retry-after", "3600"),
        StubReply::chat("{}"),
    ])
    .await;
    let client = OpenAiClient::new(OpenAiConfig {
        max_retry_after_ms: 50,
        ..config(&server)
    })
    .unwrap();
    let started = Instant::now();
    client.chat(&schema_request()).await.unwrap();
    let elapsed = started.elapsed();
    assert!(
        elapsed >= Duration::from_millis(50) && elapsed < Duration::from_secs(5),
        "{elapsed:?}"
    );
}

#[tokio::test]
async fn server_errors_forever_give_up_after_bounded_retries() {
    let server = StubServer::sequence(vec![StubReply::error(500, "boom")]).await;
    let client = OpenAiClient::new(OpenAiConfig {
        max_retries: 2,
        ..config(&server)
    })
    .unwrap();
    let err = client.chat(&schema_request()).await.unwrap_err();
    assert_eq!(server.request_count(), 3, "one attempt plus two retries");
    match err {
        StylusError::Http {
            status, message, ..
        } => {
            assert_eq!(status, Some(500));
            assert!(
                message.contains("boom") && message.contains("after 3 attempts"),
                "{message}"
            );
        }
        other => panic!("expected an HTTP error, got {other:?}"),
    }
}

#[tokio::test]
async fn request_timeout_408_and_every_5xx_are_retried() {
    let server = StubServer::sequence(vec![
        StubReply::error(408, "request timeout"),
        StubReply::error(502, "bad gateway"),
        StubReply::error(503, "unavailable"),
        StubReply::chat("{\"a\": 8}"),
    ])
    .await;
    let client = OpenAiClient::new(config(&server)).unwrap();
    assert_eq!(
        client.chat(&schema_request()).await.unwrap().content,
        "{\"a\": 8}"
    );
    assert_eq!(server.request_count(), 4);
}

#[tokio::test]
async fn client_errors_other_than_429_and_408_are_not_retried() {
    let server = StubServer::sequence(vec![StubReply::error(401, "bad key")]).await;
    let client = OpenAiClient::new(config(&server)).unwrap();
    let err = client.chat(&schema_request()).await.unwrap_err();
    assert!(
        matches!(
            err,
            StylusError::Http {
                status: Some(401),
                ..
            }
        ),
        "{err}"
    );
    assert_eq!(server.request_count(), 1);
}

#[tokio::test]
async fn slow_server_times_out_and_is_retried_within_bounds() {
    let server =
        StubServer::sequence(vec![StubReply::chat("{}").after(Duration::from_secs(3))]).await;
    let client = OpenAiClient::new(OpenAiConfig {
        timeout_secs: 0.2,
        max_retries: 1,
        ..config(&server)
    })
    .unwrap();
    let started = Instant::now();
    let err = client.chat(&schema_request()).await.unwrap_err();
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(server.request_count(), 2);
    match err {
        StylusError::Http {
            status, message, ..
        } => {
            assert_eq!(status, None);
            assert!(message.contains("timed out"), "{message}");
        }
        other => panic!("expected an HTTP error, got {other:?}"),
    }
}

#[tokio::test]
async fn slow_reply_then_fast_reply_succeeds() {
    let server = StubServer::sequence(vec![
        StubReply::chat("{\"late\": true}").after(Duration::from_secs(3)),
        StubReply::chat("{\"a\": 5}"),
    ])
    .await;
    let client = OpenAiClient::new(OpenAiConfig {
        timeout_secs: 0.2,
        ..config(&server)
    })
    .unwrap();
    assert_eq!(
        client.chat(&schema_request()).await.unwrap().content,
        "{\"a\": 5}"
    );
}

#[tokio::test]
async fn concurrency_is_limited_across_clones() {
    let server = StubServer::sequence(vec![
        StubReply::chat("{}").after(Duration::from_millis(200)),
    ])
    .await;
    let client = OpenAiClient::new(OpenAiConfig {
        max_concurrency: 2,
        ..config(&server)
    })
    .unwrap();
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..6 {
        let client = client.clone();
        tasks.spawn(async move { client.chat(&schema_request()).await });
    }
    while let Some(done) = tasks.join_next().await {
        done.unwrap().unwrap();
    }
    // Six 200 ms requests two at a time need three rounds; unlimited they would take one.
    assert!(
        started.elapsed() >= Duration::from_millis(590),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(server.request_count(), 6);
}

#[tokio::test]
async fn chat_json_asks_again_with_the_reason_and_returns_the_conversation() {
    let server = StubServer::sequence(vec![
        StubReply::chat("Sure! Here is what you asked for."),
        StubReply::chat("```json\n{\"a\": 6}\n```"),
    ])
    .await;
    let client = OpenAiClient::new(config(&server)).unwrap();
    let reply = client
        .chat_json(&schema_request(), 3, |v| {
            v["a"].as_i64().ok_or_else(|| "no integer `a`".to_string())
        })
        .await
        .unwrap();
    assert_eq!(reply.value, 6);
    assert_eq!(reply.attempts, 2);
    // system, user, bad assistant reply, re-ask, accepted reply
    assert_eq!(reply.messages.len(), 5);
    assert_eq!(reply.messages[4].role, Role::Assistant);
    let second = server.requests()[1].json();
    let reask = second["messages"][3]["content"].as_str().unwrap();
    assert!(
        reask.contains("cannot be used") && reask.contains("not valid JSON"),
        "{reask}"
    );
}

#[tokio::test]
async fn chat_json_rejected_by_the_validator_is_asked_again() {
    let server = StubServer::sequence(vec![
        StubReply::chat("{\"a\": \"seven\"}"),
        StubReply::chat("{\"a\": 7}"),
    ])
    .await;
    let client = OpenAiClient::new(config(&server)).unwrap();
    let reply = client
        .chat_json(&schema_request(), 3, |v| {
            v["a"].as_i64().ok_or_else(|| "no integer `a`".to_string())
        })
        .await
        .unwrap();
    assert_eq!((reply.value, reply.attempts), (7, 2));
    assert!(server.requests()[1].chat_text().contains("no integer `a`"));
}

#[tokio::test]
async fn chat_json_never_usable_is_a_model_reply_error() {
    let server = StubServer::sequence(vec![StubReply::chat("I cannot do JSON today.")]).await;
    let client = OpenAiClient::new(config(&server)).unwrap();
    let err = client
        .chat_json(&schema_request(), 3, Ok)
        .await
        .unwrap_err();
    assert_eq!(server.request_count(), 3);
    match err {
        StylusError::ModelReply {
            service,
            attempts,
            message,
        } => {
            assert_eq!(attempts, 3);
            assert!(service.contains("stub-model"), "{service}");
            assert!(message.contains("not valid JSON"), "{message}");
        }
        other => panic!("expected a model-reply error, got {other:?}"),
    }
}

#[tokio::test]
async fn reply_without_content_or_with_a_refusal_is_unusable() {
    let server = StubServer::sequence(vec![
        StubReply::json(&json!({"choices": []})),
        StubReply::json(&json!({"choices": [{"message": {"content": null, "refusal": "no"}}]})),
    ])
    .await;
    let client = OpenAiClient::new(config(&server)).unwrap();
    let err = client
        .chat_json(&schema_request(), 2, Ok)
        .await
        .unwrap_err();
    match err {
        StylusError::ModelReply { message, .. } => {
            assert!(message.contains("refused"), "{message}")
        }
        other => panic!("expected a model-reply error, got {other:?}"),
    }
    assert_eq!(server.request_count(), 2);
}

#[test]
fn parse_json_reply_accepts_fences_and_surrounding_prose_only_around_json() {
    assert_eq!(parse_json_reply(" {\"a\":1} ").unwrap(), json!({"a": 1}));
    assert_eq!(
        parse_json_reply("```json\n{\"a\":1}\n```").unwrap(),
        json!({"a": 1})
    );
    assert_eq!(
        parse_json_reply("```\n{\"a\":1}\n```").unwrap(),
        json!({"a": 1})
    );
    assert_eq!(
        parse_json_reply("Here it is: {\"a\": {\"b\": 2}} Done.").unwrap(),
        json!({"a": {"b": 2}})
    );
    assert!(parse_json_reply("no json here").is_err());
    assert!(parse_json_reply("{\"a\": ").is_err());
    assert!(parse_json_reply("} {").is_err());
}

#[test]
fn truncate_chars_cuts_on_character_boundaries() {
    assert_eq!(truncate_chars("héllo", 10), "héllo");
    assert_eq!(truncate_chars("héllo", 2), "hé...");
    assert_eq!(truncate_chars("", 0), "");
}

#[tokio::test]
async fn backoff_is_exponential_jittered_and_capped() {
    let client = OpenAiClient::new(OpenAiConfig {
        initial_backoff_ms: 100,
        max_backoff_ms: 1_000,
        ..OpenAiConfig::new("http://127.0.0.1:1/v1", "m")
    })
    .unwrap();
    for (attempt, full_ms) in [
        (0, 100.0),
        (1, 200.0),
        (2, 400.0),
        (3, 800.0),
        (4, 1000.0),
        (40, 1000.0),
    ] {
        let draws: Vec<f64> = (0..50)
            .map(|_| client.backoff(attempt).as_secs_f64() * 1000.0)
            .collect();
        for d in &draws {
            assert!(
                *d >= full_ms * 0.5 - 1e-6 && *d <= full_ms + 1e-6,
                "attempt {attempt}: {d}"
            );
        }
        let distinct = draws
            .iter()
            .map(|d| d.to_bits())
            .collect::<std::collections::BTreeSet<_>>();
        assert!(distinct.len() > 40, "jitter varies the delay");
    }
}

#[tokio::test]
async fn embeddings_are_batched_and_put_back_in_input_order() {
    let server = StubServer::start(|_, request| {
        let inputs = request.json()["input"].as_array().cloned().unwrap_or_default();
        // Answer out of order, with explicit indices, each vector encoding its text's length.
        let mut data: Vec<_> = inputs
            .iter()
            .enumerate()
            .map(|(i, text)| json!({"index": i, "embedding": [text.as_str().unwrap().len() as f32, 1.0]}))
            .collect();
        data.reverse();
        StubReply::json(&json!({"data": data}))
    })
    .await;
    let client = OpenAiClient::new(config(&server)).unwrap();
    let texts: Vec<String> = ["a", "bb", "ccc", "dddd", "eeeee"]
        .map(String::from)
        .to_vec();
    let vectors = client.embeddings(&texts, 2).await.unwrap();
    let lengths: Vec<f32> = vectors.iter().map(|v| v[0]).collect();
    assert_eq!(lengths, vec![1.0, 2.0, 3.0, 4.0, 5.0]);
    let requests = server.requests();
    assert_eq!(requests.len(), 3);
    assert_eq!(requests[0].path, "/v1/embeddings");
    assert_eq!(requests[0].json()["input"], json!(["a", "bb"]));
    assert_eq!(requests[2].json()["input"], json!(["eeeee"]));
    assert_eq!(requests[0].json()["model"], "stub-model");
}

#[tokio::test]
async fn embeddings_with_wrong_count_or_bad_indices_are_errors() {
    let client_for = |server: &StubServer| OpenAiClient::new(config(server)).unwrap();
    let texts = vec!["x".to_string(), "y".to_string()];

    let short = StubServer::sequence(vec![StubReply::embeddings(&[vec![1.0]])]).await;
    let err = client_for(&short).embeddings(&texts, 8).await.unwrap_err();
    assert!(
        matches!(err, StylusError::ModelReply { .. }) && err.to_string().contains("asked for 2"),
        "{err}"
    );

    let repeated = StubServer::sequence(vec![StubReply::json(&json!({"data": [
        {"index": 0, "embedding": [1.0]}, {"index": 0, "embedding": [2.0]}]}))])
    .await;
    let err = client_for(&repeated)
        .embeddings(&texts, 8)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("repeated"), "{err}");

    let not_numbers = StubServer::sequence(vec![StubReply::json(&json!({"data": [
        {"index": 0, "embedding": [1.0]}, {"index": 1, "embedding": ["x"]}]}))])
    .await;
    let err = client_for(&not_numbers)
        .embeddings(&texts, 8)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("not a number"), "{err}");
}

#[tokio::test]
async fn a_non_json_success_body_is_an_http_error() {
    let server = StubServer::sequence(vec![StubReply::status(200, "<html>proxy</html>")]).await;
    let client = OpenAiClient::new(config(&server)).unwrap();
    let err = client.chat(&schema_request()).await.unwrap_err();
    assert!(
        matches!(&err, StylusError::Http { status: Some(200), message, .. } if message.contains("not JSON")),
        "{err}"
    );
}

#[test]
fn every_role_reads_the_same_variables_with_openai_fallbacks() {
    let env = |pairs: &'static [(&'static str, &'static str)]| {
        move |name: &str| {
            pairs
                .iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| v.to_string())
        }
    };
    let own = OpenAiConfig::from_vars(
        "VLM",
        "gpt-4o-mini",
        env(&[
            ("STYLUS_VLM_BASE_URL", "http://127.0.0.1:8080/v1"),
            ("STYLUS_VLM_MODEL", "qwen2-vl"),
            ("STYLUS_VLM_API_KEY", "k"),
            ("OPENAI_BASE_URL", "http://elsewhere/v1"),
            ("OPENAI_API_KEY", "o"),
        ]),
    );
    assert_eq!(own.base_url, "http://127.0.0.1:8080/v1");
    assert_eq!(own.model, "qwen2-vl");
    assert_eq!(own.api_key_env.as_deref(), Some("STYLUS_VLM_API_KEY"));

    let fallback = OpenAiConfig::from_vars(
        "LLM",
        "gpt-4o-mini",
        env(&[
            ("STYLUS_LLM_MODEL", " "),
            ("OPENAI_BASE_URL", "http://elsewhere/v1"),
            ("OPENAI_API_KEY", "o"),
        ]),
    );
    assert_eq!(fallback.base_url, "http://elsewhere/v1");
    assert_eq!(fallback.model, "gpt-4o-mini");
    assert_eq!(fallback.api_key_env.as_deref(), Some("OPENAI_API_KEY"));

    let bare = OpenAiConfig::from_vars("EMBED", "text-embedding-3-small", env(&[]));
    assert_eq!(bare.base_url, OpenAiConfig::default().base_url);
    assert_eq!(bare.api_key_env, None);
}
