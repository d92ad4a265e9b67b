//! The HTTP API's routes (SPEC §5): one table of every path the API answers,
//! with the methods each allows and its template, the `route` label of the
//! request metrics. [`crate::api`] dispatches on a [`Route`] and
//! [`crate::metrics`] counts by it, so a new route is one variant, one line
//! in [`Route::spec`]'s table, one in [`Route::of`] and an arm in `api`.

/// Every route the API knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Route {
    /// `/`: the page.
    Page,
    /// The page's other files (`/app.js`, …).
    Asset,
    /// `/metrics`, where Prometheus looks.
    Metrics,
    Health,
    /// `/api/v1/metrics`, the same exposition as `/metrics`.
    ApiMetrics,
    Channels,
    Channel,
    ChannelSchema,
    ChannelValidateSchema,
    PortsAvailable,
    PortStatus,
    /// `/api/v1/channels/{name}/history`: the last minutes, second by second.
    ChannelHistory,
    /// `/api/v1/channels/{name}/live`: a stream of decoded records (SSE).
    ChannelLive,
    /// No route: 404 (after the token check when under `/api/v1`).
    Other,
}

/// The API's paths under this prefix.
pub(crate) const PREFIX: &str = "/api/v1";

/// A path's route and its one parameter (`{name}` or `{port}`; empty for
/// routes without one).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Matched<'a> {
    pub route: Route,
    pub param: &'a str,
}

impl Route {
    /// Every route, in declaration order (`ALL[r.index()] == r`).
    pub const ALL: [Route; 14] = [
        Route::Page,
        Route::Asset,
        Route::Metrics,
        Route::Health,
        Route::ApiMetrics,
        Route::Channels,
        Route::Channel,
        Route::ChannelSchema,
        Route::ChannelValidateSchema,
        Route::PortsAvailable,
        Route::PortStatus,
        Route::ChannelHistory,
        Route::ChannelLive,
        Route::Other,
    ];

    /// The table: the route's template, which is the `route` label of the
    /// request metrics (never the raw path, so a client cannot create
    /// series by inventing paths), and the methods it answers, as a 405's
    /// `Allow` lists them.
    const fn spec(self) -> (&'static str, &'static str) {
        match self {
            Route::Page => ("/", "GET, HEAD"),
            Route::Asset => ("/{asset}", "GET, HEAD"),
            Route::Metrics => ("/metrics", "GET"),
            Route::Health => ("/api/v1/health", "GET"),
            Route::ApiMetrics => ("/api/v1/metrics", "GET"),
            Route::Channels => ("/api/v1/channels", "GET, POST"),
            Route::Channel => ("/api/v1/channels/{name}", "GET, PATCH, DELETE"),
            Route::ChannelSchema => ("/api/v1/channels/{name}/schema", "GET"),
            Route::ChannelValidateSchema => ("/api/v1/channels/{name}/validate-schema", "POST"),
            Route::PortsAvailable => ("/api/v1/ports/available", "GET"),
            Route::PortStatus => ("/api/v1/ports/{port}/status", "GET"),
            Route::ChannelHistory => ("/api/v1/channels/{name}/history", "GET"),
            Route::ChannelLive => ("/api/v1/channels/{name}/live", "GET"),
            Route::Other => ("other", ""),
        }
    }

    /// Where the route's request counts are in `metrics`' table.
    pub fn index(self) -> usize {
        self as usize
    }

    pub fn template(self) -> &'static str {
        self.spec().0
    }

    pub fn allow(self) -> &'static str {
        self.spec().1
    }

    /// The route `path` (without the query) falls under.
    pub fn of(path: &str) -> Matched<'_> {
        let found = |route, param| Matched { route, param };
        if path == "/" {
            return found(Route::Page, "");
        }
        if path == "/metrics" {
            return found(Route::Metrics, "");
        }
        if crate::web::asset(path).is_some() {
            return found(Route::Asset, "");
        }
        let Some(rest) = path.strip_prefix(PREFIX).and_then(|r| r.strip_prefix('/')) else {
            return found(Route::Other, "");
        };
        let mut parts = rest.split('/');
        match (parts.next(), parts.next(), parts.next(), parts.next()) {
            (Some("health"), None, _, _) => found(Route::Health, ""),
            (Some("metrics"), None, _, _) => found(Route::ApiMetrics, ""),
            (Some("channels"), None, _, _) => found(Route::Channels, ""),
            (Some("channels"), Some(name), None, _) => found(Route::Channel, name),
            (Some("channels"), Some(name), Some("schema"), None) => {
                found(Route::ChannelSchema, name)
            }
            (Some("channels"), Some(name), Some("validate-schema"), None) => {
                found(Route::ChannelValidateSchema, name)
            }
            (Some("channels"), Some(name), Some("history"), None) => {
                found(Route::ChannelHistory, name)
            }
            (Some("channels"), Some(name), Some("live"), None) => found(Route::ChannelLive, name),
            (Some("ports"), Some("available"), None, _) => found(Route::PortsAvailable, ""),
            (Some("ports"), Some(port), Some("status"), None) => found(Route::PortStatus, port),
            _ => found(Route::Other, ""),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn all_is_in_declaration_order() {
        for (i, route) in Route::ALL.iter().enumerate() {
            assert_eq!(route.index(), i, "{route:?}");
        }
    }

    /// Every template, its parameter filled in, is found as its own route.
    #[test]
    fn every_template_routes_to_itself() {
        for route in Route::ALL {
            let path = match route {
                Route::Asset => "/app.js".to_string(),
                Route::Other => continue,
                _ => route
                    .template()
                    .replace("{name}", "abc")
                    .replace("{port}", "26001"),
            };
            let m = Route::of(&path);
            assert_eq!(m.route, route, "{path}");
            let param = if path.contains("abc") {
                "abc"
            } else if path.contains("26001") {
                "26001"
            } else {
                ""
            };
            assert_eq!(m.param, param, "{path}");
        }
    }

    #[test]
    fn unknown_paths_are_other() {
        for p in [
            "/nope",
            "/api/v1",
            "/api/v1/",
            "/api/v1x/health",
            "/api/v1/health/",
            "/api/v1//channels",
            "/api/v1/channels/x/y/z",
            "/api/v2/health",
            "/api/v1/ports/1",
        ] {
            assert_eq!(Route::of(p).route, Route::Other, "{p}");
        }
    }
}
