"""The HTTP API of contract §1: routers per resource (`api.routes`), their dependencies
(`api.deps`), the request and response models (`api.schemas`) and what the routes do with
executions, as plain functions over `ApiStore` (`api.executions`). The app is `api_service.app`."""
