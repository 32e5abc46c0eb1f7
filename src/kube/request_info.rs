//! What a request does, in Kubernetes terms, derived as kube-apiserver's
//! `RequestInfoFactory` derives it (k8s.io/apiserver/pkg/endpoints/request): the verb
//! (get, list, watch, create, update, patch, delete, deletecollection, or the
//! lower-case method for non-resource paths), API group and version, resource,
//! subresource, namespace and name. No I/O.

use crate::wire::http::query_pairs;

pub use crate::record::event::RequestInfo;

/// Derives the request's verb and target from its method, path and query.
pub fn request_info(method: &str, path: &str, query: &str) -> RequestInfo {
    let non_resource = || RequestInfo { verb: method.to_ascii_lowercase(), ..RequestInfo::default() };
    let segs: Vec<&str> = path.trim_matches('/').split('/').filter(|s| !s.is_empty()).collect();
    let (api_group, api_version, mut rest) = match segs.as_slice() {
        ["api", version, rest @ ..] if !rest.is_empty() => ("", *version, rest),
        ["apis", group, version, rest @ ..] if !rest.is_empty() => (*group, *version, rest),
        _ => return non_resource(),
    };
    let mut info = RequestInfo { is_resource_request: true, api_group: api_group.into(), api_version: api_version.into(), ..RequestInfo::default() };
    info.verb = match method {
        "POST" => "create",
        "GET" | "HEAD" => "get",
        "PUT" => "update",
        "PATCH" => "patch",
        "DELETE" => "delete",
        _ => "",
    }
    .to_string();
    if info.verb.is_empty() {
        info.verb = method.to_ascii_lowercase();
    }
    // The deprecated /watch/ path prefix.
    let mut watch_prefix = false;
    if rest.first() == Some(&"watch") {
        watch_prefix = true;
        rest = &rest[1..];
    }
    // namespaces/{ns}/{resource}/... ; but namespaces/{name}, /status and /finalize
    // are the namespace object itself.
    if rest.first() == Some(&"namespaces") && rest.len() > 1 {
        info.namespace = rest[1].to_string();
        if rest.len() > 2 && !matches!(rest[2], "status" | "finalize") {
            rest = &rest[2..];
        }
    }
    match rest {
        [] => {}
        [resource] => info.resource = resource.to_string(),
        [resource, name] => {
            info.resource = resource.to_string();
            info.name = name.to_string();
        }
        [resource, name, sub, ..] => {
            info.resource = resource.to_string();
            info.name = name.to_string();
            info.subresource = sub.to_string();
        }
    }
    let watch_param = query_pairs(query).iter().any(|(k, v)| k == "watch" && (v == "true" || v == "1"));
    if (watch_prefix || watch_param) && info.verb == "get" {
        info.verb = "watch".into();
    } else if info.verb == "get" && info.name.is_empty() {
        info.verb = "list".into();
    } else if info.verb == "delete" && info.name.is_empty() {
        info.verb = "deletecollection".into();
    }
    info
}

#[cfg(test)]
mod tests {
    use super::*;

    /// verb, group, resource, subresource, namespace, name
    type Want<'a> = (&'a str, &'a str, &'a str, &'a str, &'a str, &'a str);

    #[test]
    fn like_kube_apiserver() {
        let cases: &[(&str, &str, &str, Want<'_>)] = &[
            // method, path, query => verb, group, resource, subresource, namespace, name
            ("GET", "/api/v1/namespaces/default/pods", "", ("list", "", "pods", "", "default", "")),
            ("GET", "/api/v1/namespaces/default/pods", "watch=true&resourceVersion=5", ("watch", "", "pods", "", "default", "")),
            ("GET", "/api/v1/watch/namespaces/default/pods", "", ("watch", "", "pods", "", "default", "")),
            ("GET", "/api/v1/namespaces/default/pods/web-0", "", ("get", "", "pods", "", "default", "web-0")),
            ("GET", "/api/v1/namespaces/default/pods/web-0/log", "follow=true", ("get", "", "pods", "log", "default", "web-0")),
            ("POST", "/api/v1/namespaces/default/pods/web-0/exec", "command=sh", ("create", "", "pods", "exec", "default", "web-0")),
            ("GET", "/api/v1/namespaces/default/pods/web-0/exec", "command=sh", ("get", "", "pods", "exec", "default", "web-0")),
            ("POST", "/api/v1/namespaces/default/pods/web-0/portforward", "", ("create", "", "pods", "portforward", "default", "web-0")),
            ("PATCH", "/api/v1/namespaces/default/pods/web-0", "", ("patch", "", "pods", "", "default", "web-0")),
            ("PUT", "/api/v1/namespaces/default/configmaps/c", "", ("update", "", "configmaps", "", "default", "c")),
            ("DELETE", "/api/v1/namespaces/default/pods/web-0", "", ("delete", "", "pods", "", "default", "web-0")),
            ("DELETE", "/api/v1/namespaces/default/pods", "", ("deletecollection", "", "pods", "", "default", "")),
            ("POST", "/api/v1/namespaces/default/pods", "", ("create", "", "pods", "", "default", "")),
            ("GET", "/api/v1/namespaces", "", ("list", "", "namespaces", "", "", "")),
            ("GET", "/api/v1/namespaces/kube-system", "", ("get", "", "namespaces", "", "kube-system", "kube-system")),
            ("GET", "/api/v1/nodes/n1", "", ("get", "", "nodes", "", "", "n1")),
            ("PUT", "/api/v1/namespaces/gone/finalize", "", ("update", "", "namespaces", "finalize", "gone", "gone")),
            ("GET", "/apis/apps/v1/namespaces/ns/deployments/d/scale", "", ("get", "apps", "deployments", "scale", "ns", "d")),
            ("POST", "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews", "", ("create", "authorization.k8s.io", "selfsubjectaccessreviews", "", "", "")),
            ("GET", "/apis/apps/v1/deployments", "", ("list", "apps", "deployments", "", "", "")),
        ];
        for (m, p, q, want) in cases {
            let i = request_info(m, p, q);
            let got = (i.verb.as_str(), i.api_group.as_str(), i.resource.as_str(), i.subresource.as_str(), i.namespace.as_str(), i.name.as_str());
            assert_eq!(got, *want, "{m} {p}?{q}");
            assert!(i.is_resource_request);
        }
    }

    #[test]
    fn non_resource_paths_use_the_method() {
        for (m, p) in [("GET", "/api"), ("GET", "/apis"), ("GET", "/version"), ("GET", "/openapi/v3"), ("GET", "/apis/apps/v1"), ("POST", "/healthz")] {
            let i = request_info(m, p, "");
            assert!(!i.is_resource_request, "{p}");
            assert_eq!(i.verb, m.to_ascii_lowercase());
        }
    }
}
