"""The Ray Serve application: the YNAT classifier over HTTP (Hugging Face Inference API / TEI protocol).

One module per job, imported by path (this package re-exports nothing, so each name has one home), as TEI
separates its types, handlers and start-up:

- `schema`: the HTTP contract: request/response models (`PredictRequest`, `Parameters`, `Prediction`) and
  every error as JSON with its `error_type` (`ApiError`, `install_error_handlers`). No Ray.
- `replica`: the deployment `YnatServer`: its FastAPI handlers, admission control, the request-tracking
  middleware, and the engine step that tells a text the tokenizer cannot take (422) from a failing model (500,
  logged).
- `batching`: continuous batching (`Batcher`): texts of concurrent requests share forward passes, a lone
  request never waits. No Ray.
- `telemetry`: the replica's Prometheus metrics (`ReplicaMetrics`, the exposed names in `EXPOSED`).
- `demo`: the self-contained /demo page.
- `ingress`: HAProxy direct ingress or Serve's Python proxy, and the host/port checks made before Serve starts.
- `app`: start-up: `check_serving_config`, `build_app`, `deploy`, `run_server` (`ynat-ray serve`), and
  `app_builder` with its typed arguments `ServeAppArgs` (`serve run`, `serve deploy`, KubeRay).

Imports flow one way: app -> replica, ingress; replica -> schema, demo, batching, telemetry.
"""
