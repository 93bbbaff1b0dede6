//! The OpenAPI 3.1 document (`GET /openapi.json`), written by hand: the API is small, and a
//! derive crate would put a schema attribute on every type for a dozen routes.

use serde_json::{Value, json};

fn error_responses() -> Value {
    json!({
        "400": { "description": "A field outside its range (the range is in `detail`), a LoRA name that is a path, an unknown LoRA", "content": { "application/json": { "schema": { "$ref": "#/components/schemas/Error" } } } },
        "401": { "description": "Missing or wrong bearer token (when the server has --api-key)" },
        "413": { "description": "Body over --body-limit" },
        "422": { "description": "Body is not the JSON the endpoint takes" }
    })
}

fn with_errors(mut responses: Value) -> Value {
    if let (Some(map), Value::Object(errors)) = (responses.as_object_mut(), error_responses()) {
        map.extend(errors);
    }
    responses
}

/// The document.
pub fn document() -> Value {
    let json_body = |schema: &str| json!({ "required": true, "content": { "application/json": { "schema": { "$ref": format!("#/components/schemas/{schema}") } } } });
    let ok_json = |description: &str| json!({ "200": { "description": description, "content": { "application/json": {} } } });
    json!({
        "openapi": "3.1.0",
        "info": {
            "title": "Stylus",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "Automatic LoRA selection and SD 1.5 rendering. The /sdapi/v1 routes are the AUTOMATIC1111 WebUI API subset SD clients use; /v1 routes are Stylus' own."
        },
        "components": {
            "securitySchemes": { "bearer": { "type": "http", "scheme": "bearer" } },
            "schemas": {
                "Error": { "type": "object", "required": ["error", "detail"], "properties": {
                    "error": { "type": "string", "description": "Kind: BadRequest, ValidationError, QueueFull, Timeout, Interrupted, ..." },
                    "detail": { "type": "string" } } },
                "Txt2ImgRequest": { "type": "object", "description": "A1111 fields; others are ignored when off, refused when on (enable_hr, restore_faces, tiling).", "properties": {
                    "prompt": { "type": "string", "description": "May carry <lora:NAME:WEIGHT> tags: NAME is a LoRA the server lists, or a catalog id or alias" },
                    "negative_prompt": { "type": "string" },
                    "steps": { "type": "integer", "minimum": 1 },
                    "cfg_scale": { "type": "number", "minimum": 0, "maximum": 50 },
                    "sampler_name": { "type": "string", "description": "An A1111 name from /sdapi/v1/samplers" },
                    "scheduler": { "type": "string", "description": "`Karras` turns DPM++ 2M into DPM++ 2M Karras" },
                    "seed": { "type": "integer", "minimum": -1, "description": "-1: random" },
                    "width": { "type": "integer", "multipleOf": 8 },
                    "height": { "type": "integer", "multipleOf": 8 },
                    "batch_size": { "type": "integer", "minimum": 1 },
                    "n_iter": { "type": "integer", "minimum": 1 },
                    "send_images": { "type": "boolean", "default": true },
                    "override_settings": { "type": "object", "properties": { "CLIP_stop_at_last_layers": { "type": "integer", "minimum": 1, "maximum": 2 } } },
                    "stylus": { "type": "boolean", "default": false, "description": "Select adapters for the prompt (Stylus); the plan comes back in info.stylus_plan" }
                } },
                "Txt2ImgResponse": { "type": "object", "properties": {
                    "images": { "type": "array", "items": { "type": "string", "contentEncoding": "base64", "contentMediaType": "image/png" } },
                    "parameters": { "type": "object", "description": "The request as sent" },
                    "info": { "type": "string", "description": "A JSON object as a string: seed, all_seeds, all_prompts, infotexts, ... (as A1111)" } } },
                "SelectRequest": { "type": "object", "required": ["prompt"], "additionalProperties": false, "properties": {
                    "prompt": { "type": "string" },
                    "batch": { "type": "integer", "minimum": 1, "description": "Sample this many masks; absent: every mask" },
                    "seed": { "type": "integer", "minimum": 0 } } },
                "RetrieveRequest": { "type": "object", "required": ["prompt"], "additionalProperties": false, "properties": {
                    "prompt": { "type": "string" },
                    "top_k": { "type": "integer", "minimum": 1 } } }
            }
        },
        "security": [ { "bearer": [] } ],
        "paths": {
            "/sdapi/v1/txt2img": { "post": {
                "summary": "Render images (queued; 429 with Retry-After when the queue is full)",
                "requestBody": json_body("Txt2ImgRequest"),
                "responses": with_errors(json!({
                    "200": { "description": "Images and info", "content": { "application/json": { "schema": { "$ref": "#/components/schemas/Txt2ImgResponse" } } } },
                    "409": { "description": "Interrupted (POST /sdapi/v1/interrupt)" },
                    "429": { "description": "Queue full; Retry-After says when to retry" },
                    "503": { "description": "No checkpoint loaded, or shutting down" },
                    "504": { "description": "Not finished within --request-timeout" }
                })) } },
            "/sdapi/v1/img2img": { "post": {
                "summary": "img2img and inpainting: the txt2img fields plus init_images (one, base64), mask, denoising_strength, resize_mode (0-2), mask_blur, inpainting_mask_invert, inpainting_fill (1), inpaint_full_res (false); body limit --image-body-limit",
                "requestBody": { "required": true, "content": { "application/json": { "schema": { "type": "object", "required": ["init_images"] } } } },
                "responses": with_errors(json!({
                    "200": { "description": "Images and info (with denoising_strength)", "content": { "application/json": { "schema": { "$ref": "#/components/schemas/Txt2ImgResponse" } } } },
                    "409": { "description": "Interrupted (POST /sdapi/v1/interrupt)" },
                    "429": { "description": "Queue full; Retry-After says when to retry" },
                    "503": { "description": "No checkpoint loaded, or shutting down" },
                    "504": { "description": "Not finished within --request-timeout" }
                })) } },
            "/sdapi/v1/loras": { "get": { "summary": "LoRA files of --lora-dir: name, alias, path (inside the folder), metadata", "responses": ok_json("List") } },
            "/sdapi/v1/sd-models": { "get": { "summary": "The loaded checkpoint", "responses": ok_json("List") } },
            "/sdapi/v1/samplers": { "get": { "summary": "Samplers by A1111 name", "responses": ok_json("List") } },
            "/sdapi/v1/options": { "get": { "summary": "Settings A1111 clients read (sd_model_checkpoint, CLIP_stop_at_last_layers)", "responses": ok_json("Object") },
                "post": { "summary": "Set settings: sd_model_checkpoint (the loaded model only), CLIP_stop_at_last_layers (1 or 2); other keys ignored", "requestBody": { "required": true, "content": { "application/json": { "schema": { "type": "object" } } } }, "responses": with_errors(ok_json("null")) } },
            "/sdapi/v1/progress": { "get": { "summary": "Progress of the running render and the queue's job count", "responses": ok_json("Object") } },
            "/sdapi/v1/interrupt": { "post": { "summary": "Stop the running render", "responses": ok_json("{interrupted: bool}") } },
            "/v1/select": { "post": { "summary": "The selection plan (as `stylus select --json`)", "requestBody": json_body("SelectRequest"), "responses": with_errors(ok_json("SelectionPlan")) } },
            "/v1/retrieve": { "post": { "summary": "The ranked candidates", "requestBody": json_body("RetrieveRequest"), "responses": with_errors(ok_json("{query, results, timings_ms}")) } },
            "/metrics": { "get": { "summary": "Prometheus metrics", "responses": { "200": { "description": "Text format 0.0.4", "content": { "text/plain": {} } } } } },
            "/openapi.json": { "get": { "summary": "This document", "responses": ok_json("OpenAPI") } },
            "/healthz": { "get": { "summary": "Liveness (no token needed)", "security": [], "responses": ok_json("{status}") } },
            "/readyz": { "get": { "summary": "Readiness: 503 while shutting down (no token needed)", "security": [], "responses": ok_json("{ready, renders, queue_depth}") } }
        }
    })
}
