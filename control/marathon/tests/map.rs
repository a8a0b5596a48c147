//! `map_apps`: labels and tasks -> groups, routes, services, VIPs; bad apps reported, others kept.

use std::path::Path;

use padis_marathon::{map_apps, Apps, Effect};
use padis_model::marathon::MarathonConfig;
use padis_model::{Balance, DesiredState};

const APPS: &str = r#"{"apps":[
 {"id":"/prod/web","instances":4,"requirePorts":true,"versionInfo":{"lastConfigChangeAt":"2026-01-01T00:00:00.000Z"},
  "labels":{"PADIS_GROUP":"external","PADIS_0_VHOST":"web.example.com,www.example.com","PADIS_0_PATH":"/api",
            "PADIS_0_BALANCE":"leastconn","PADIS_0_HEALTHCHECK_PATH":"/health","PADIS_1_VIP":"10.10.0.1:53"},
  "portDefinitions":[{"port":10000,"protocol":"tcp","name":"http"},{"port":53,"protocol":"udp","name":"dns"}],
  "healthChecks":[{"protocol":"HTTP","path":"/health","portIndex":0}],
  "tasks":[
   {"id":"web.1","host":"10.0.0.1","ports":[31001,53],"state":"TASK_RUNNING","healthCheckResults":[{"alive":true}]},
   {"id":"web.2","host":"10.0.0.2","ports":[31001,53],"state":"TASK_RUNNING","healthCheckResults":[{"alive":false}]},
   {"id":"web.3","host":"10.0.0.3","ports":[31001,53],"state":"TASK_STAGING","healthCheckResults":[]},
   {"id":"web.4","host":"10.0.0.4","ports":[31001,53],"state":"TASK_KILLING","healthCheckResults":[{"alive":true}]},
   {"id":"web.5","host":"10.0.0.5","ports":[31001,53],"state":"TASK_RUNNING","healthCheckResults":[]}
  ]},
 {"id":"/legacy/shop","labels":{"HAPROXY_GROUP":"external","HAPROXY_0_VHOST":"shop.example.com","HAPROXY_0_STICKY":"true",
   "HAPROXY_0_REDIRECT_TO_HTTPS":"true","HAPROXY_0_BACKEND_HTTP_OPTIONS":"ignored"},
  "ipAddress":{"discovery":{"ports":[{"number":8080,"name":"http","protocol":"tcp"}]},"networkName":"calico"},
  "tasks":[{"id":"shop.1","host":"10.0.0.9","ports":[],"ipAddresses":[{"ipAddress":"172.16.0.7","protocol":"IPv4"}],"state":"TASK_RUNNING"}]},
 {"id":"/bad","labels":{"PADIS_GROUP":"external","PADIS_0_VHOST":"Bad Host!","PADIS_3_VIP":"x"},
  "portDefinitions":[{"port":0,"protocol":"tcp"}],"tasks":[]},
 {"id":"/clash","versionInfo":{"lastConfigChangeAt":"2026-02-01T00:00:00.000Z"},"labels":{"PADIS_GROUP":"external","PADIS_0_VHOST":"web.example.com","PADIS_0_PATH":"/api/"},
  "portDefinitions":[{"port":0,"protocol":"tcp"}],"tasks":[]},
 {"id":"/internal","labels":{"PADIS_GROUP":"internal","PADIS_0_VHOST":"int.example.com"},
  "portDefinitions":[{"port":0,"protocol":"tcp"}],"tasks":[]},
 {"id":"/broken","instances":"three"}
]}"#;

fn cfg() -> MarathonConfig {
    MarathonConfig {
        urls: vec!["http://127.0.0.1:1".into()],
        zone: Some("apps.example.com".into()),
        service_ports: false,
        ..Default::default()
    }
}

#[test]
fn labels_and_tasks_map_to_the_gateway() {
    let apps = Apps::from_json(APPS.as_bytes()).unwrap();
    let st = map_apps(&apps, &cfg());

    let web =
        st.groups.iter().find(|g| g.name == "marathon:/prod/web:0").unwrap_or_else(|| panic!("{:?}", st.problems));
    assert_eq!(web.balance, Balance::LeastRequest);
    assert_eq!(web.health.as_ref().map(|h| h.path.as_str()), Some("/health"));
    let b: Vec<(String, bool)> = web.backends.iter().map(|b| (b.addr.to_string(), b.draining)).collect();
    // Healthy running task serves, killing task drains; unhealthy, unchecked and staging tasks are out.
    assert_eq!(b, vec![("10.0.0.1:31001".into(), false), ("10.0.0.4:31001".into(), true)]);

    let hosts: Vec<_> = st
        .routes
        .iter()
        .filter(|r| r.group.as_deref() == Some("marathon:/prod/web:0"))
        .map(|r| (r.host.clone().unwrap(), r.path.clone()))
        .collect();
    assert_eq!(hosts, vec![("web.example.com".into(), "/api".into()), ("www.example.com".into(), "/api".into())]);
    assert!(st.routes.iter().all(|r| r.origin.as_deref().is_some_and(|o| o.starts_with("marathon:/"))));

    let vip = st.vips.iter().find(|v| v.port == 53).expect("vip");
    assert_eq!(vip.protocol, "udp");
    let vb: Vec<_> = vip.backends.iter().map(|b| (b.addr.to_string(), b.weight)).collect();
    assert_eq!(vb, vec![("10.0.0.1".into(), 1), ("10.0.0.4".into(), 0)]);

    // marathon-lb aliases and IP-per-task networking (container address + container port).
    let shop = st.groups.iter().find(|g| g.name == "marathon:/legacy/shop:0").expect("shop group");
    assert_eq!(shop.balance, Balance::Sticky);
    assert_eq!(shop.backends[0].addr.to_string(), "172.16.0.7:8080");
    assert!(st.routes.iter().any(|r| r.host.as_deref() == Some("shop.example.com") && r.redirect_https));

    // DNS: services named from app ids, SRV port names and protocols, health and draining carried.
    let svc = st.services.iter().find(|s| s.name == "web.prod").expect("service");
    assert_eq!(svc.zone.as_deref(), Some("apps.example.com"));
    assert_eq!(
        svc.ports.iter().map(|p| (p.name.clone().unwrap(), p.protocol.clone())).collect::<Vec<_>>(),
        vec![("http".to_string(), "tcp".to_string()), ("dns".to_string(), "udp".to_string())]
    );
    let inst: Vec<_> = svc.instances.iter().map(|i| (i.id.as_str(), i.healthy, i.draining, i.ports.clone())).collect();
    assert_eq!(
        inst,
        vec![
            ("web.1", true, false, vec![31001, 53]),
            ("web.2", false, false, vec![31001, 53]),
            ("web.4", true, true, vec![31001, 53]),
            ("web.5", false, false, vec![31001, 53]),
        ]
    );

    // Problems: bad labels, a clash with an earlier app, and an app that is not Marathon JSON; other group ignored.
    let problems: Vec<String> = st.problems.iter().map(|p| p.to_string()).collect();
    let joined = problems.join("\n");
    assert!(joined.contains("/bad: PADIS_0_VHOST: `bad host!`"), "{joined}");
    assert!(joined.contains("/bad: PADIS_3_VIP: port index 3"), "{joined}");
    // A marathon-lb template is reported as not honoured, named as the app wrote it; the app is still served.
    assert!(joined.contains("/legacy/shop: HAPROXY_0_BACKEND_HTTP_OPTIONS: an HAProxy config template"), "{joined}");
    let p = st.problems.iter().find(|p| p.app == "/legacy/shop").expect("shop problem");
    assert_eq!((p.effect, p.unsupported.as_deref()), (Effect::LabelIgnored, Some("HAPROXY_{n}_BACKEND_HTTP_OPTIONS")));
    assert!(joined.contains("/clash: host `web.example.com` path `/api` is already served"), "{joined}");
    assert!(joined.contains("/broken: not a Marathon app"), "{joined}");
    assert!(!joined.contains("/internal") && !st.groups.iter().any(|g| g.name.contains("internal")));
    assert!(!st.groups.iter().any(|g| g.name.contains("/bad") || g.name.contains("/clash")));
}

#[test]
fn mapped_state_passes_the_model_validation() {
    let apps = Apps::from_json(APPS.as_bytes()).unwrap();
    let st = map_apps(&apps, &cfg());
    let state = DesiredState {
        groups: st.groups,
        routes: st.routes,
        services: st.services,
        vips: st.vips,
        ..Default::default()
    };
    if let Err(e) = padis_model::validate_state(state, "marathon", Path::new("."), None) {
        panic!("{e}");
    }
}

#[test]
fn groups_star_serves_everything_and_padis_labels_are_strict() {
    let apps = Apps::from_json(APPS.as_bytes()).unwrap();
    let mut c = cfg();
    c.group = vec!["*".into()];
    let st = map_apps(&apps, &c);
    assert!(st.groups.iter().any(|g| g.name == "marathon:/internal:0"));
    let typo = Apps::from_json(br#"{"apps":[{"id":"/t","labels":{"PADIS_GROUP":"external","PADIS_0_VHSOT":"a.b"},"portDefinitions":[{"port":0}]}]}"#).unwrap();
    let st = map_apps(&typo, &cfg());
    assert_eq!(st.problems.len(), 1);
    assert_eq!(st.problems[0].label.as_deref(), Some("PADIS_0_VHSOT"));
    assert!(st.services.is_empty());
}
