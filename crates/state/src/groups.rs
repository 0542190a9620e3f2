//! Groups of apps and the dependencies between apps: which group holds what, what an
//! app depends on once group dependencies are expanded, and the order in which a deployment
//! of several apps starts (and stops) them.

use std::collections::{BTreeMap, BTreeSet};

use crate::workload::{Allocation, DeploymentAction, STOP_APPLICATION};
use crate::workload_apply::WorkloadTables;

/// The root group's id.
pub const ROOT_GROUP: &str = "/";

/// Whether `id` is `group` or lies below it (every id lies below the root).
pub fn is_under(id: &str, group: &str) -> bool {
    group == ROOT_GROUP
        || id == group
        || id
            .strip_prefix(group)
            .is_some_and(|rest| rest.starts_with('/'))
}

/// The id of the group directly holding `id` (`/prod/web` → `/prod`, `/web` → `/`).
pub fn parent_of(id: &str) -> &str {
    match id.rfind('/') {
        Some(0) | None => ROOT_GROUP,
        Some(at) => &id[..at],
    }
}

/// Groups above `id`, nearest first, ending with the root; none for the root itself.
pub fn ancestors(id: &str) -> impl Iterator<Item = &str> {
    let mut next = (id != ROOT_GROUP).then(|| parent_of(id));
    std::iter::from_fn(move || {
        let current = next?;
        next = (current != ROOT_GROUP).then(|| parent_of(current));
        Some(current)
    })
}

/// Why a set of dependencies cannot be honoured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DependencyError {
    /// `from` names a dependency that is neither an app nor a group.
    Unknown {
        /// The app or group declaring it.
        from: String,
        /// The missing id.
        dependency: String,
    },
    /// The apps depend on each other in a circle (listed in order, the first repeated last).
    Cycle(Vec<String>),
}

impl std::fmt::Display for DependencyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DependencyError::Unknown { from, dependency } => write!(
                f,
                "Dependency '{dependency}' of '{from}' is neither an app nor a group"
            ),
            DependencyError::Cycle(path) => write!(
                f,
                "Dependency graph has cyclic dependencies: {}",
                path.join(" -> ")
            ),
        }
    }
}

/// Apps and groups with their declared dependencies: what the dependency graph is built
/// from.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DependencyGraph {
    /// App id → its declared dependencies (absolute app or group ids).
    pub apps: BTreeMap<String, Vec<String>>,
    /// Stored group id → its declared dependencies.
    pub groups: BTreeMap<String, Vec<String>>,
}

impl DependencyGraph {
    /// The graph of the apps and groups in `tables`.
    pub fn of(tables: &WorkloadTables) -> Self {
        DependencyGraph {
            apps: tables
                .apps
                .iter()
                .map(|(id, app)| (id.clone(), app.dependencies.clone()))
                .collect(),
            groups: tables
                .groups
                .iter()
                .map(|(id, group)| (id.clone(), group.dependencies.clone()))
                .collect(),
        }
    }

    /// Whether a group `id` exists: stored, or holding an app or a stored group.
    pub fn group_exists(&self, id: &str) -> bool {
        id == ROOT_GROUP
            || self.groups.contains_key(id)
            || self.apps.keys().any(|app| app != id && is_under(app, id))
            || self
                .groups
                .keys()
                .any(|group| group != id && is_under(group, id))
    }

    /// The apps a dependency id stands for: the app itself, or every app below a group.
    fn expand(&self, dependency: &str) -> Option<Vec<&str>> {
        if let Some((id, _)) = self.apps.get_key_value(dependency) {
            return Some(vec![id.as_str()]);
        }
        if self.group_exists(dependency) {
            return Some(
                self.apps
                    .keys()
                    .filter(|app| is_under(app, dependency))
                    .map(String::as_str)
                    .collect(),
            );
        }
        None
    }

    /// Declared dependencies of app `id`: its own and those of every group above it.
    fn declared<'a>(&'a self, id: &'a str) -> impl Iterator<Item = &'a String> + 'a {
        let own = self.apps.get(id).into_iter().flatten();
        let inherited = ancestors(id)
            .filter_map(|group| self.groups.get(group))
            .flatten();
        own.chain(inherited)
    }

    /// Refuses dependencies of the apps and groups in `checked` that name nothing.
    pub fn check_known<'a>(
        &self,
        checked: impl IntoIterator<Item = &'a str>,
    ) -> Result<(), DependencyError> {
        for from in checked {
            let declared = self.apps.get(from).or_else(|| self.groups.get(from));
            for dependency in declared.into_iter().flatten() {
                if self.expand(dependency).is_none() {
                    return Err(DependencyError::Unknown {
                        from: from.to_string(),
                        dependency: dependency.clone(),
                    });
                }
            }
        }
        Ok(())
    }

    /// App id → the apps it depends on, group dependencies expanded (an app's own group
    /// depending on a group that holds the app does not make it depend on itself). Ids that
    /// name nothing are left out; [`Self::check_known`] refuses them where they are written.
    pub fn edges(&self) -> BTreeMap<&str, BTreeSet<&str>> {
        self.apps
            .keys()
            .map(|app| {
                let mut to: BTreeSet<&str> = self
                    .declared(app)
                    .filter_map(|dependency| self.expand(dependency))
                    .flatten()
                    .collect();
                to.remove(app.as_str());
                (app.as_str(), to)
            })
            .collect()
    }

    /// Each app's level: 0 without dependencies, else one more than its deepest dependency.
    /// A cycle is refused, naming it.
    pub fn levels(&self) -> Result<BTreeMap<String, usize>, DependencyError> {
        let edges = self.edges();
        let mut levels: BTreeMap<&str, usize> = BTreeMap::new();
        // Depth-first, with the path being walked kept to name a cycle.
        for &start in edges.keys() {
            if levels.contains_key(start) {
                continue;
            }
            let mut path: Vec<(&str, Vec<&str>)> = vec![(start, pending(&edges, start))];
            while let Some((node, waiting)) = path.last_mut() {
                let node = *node;
                match waiting.pop() {
                    Some(next) if levels.contains_key(next) => {}
                    Some(next) => {
                        if let Some(at) = path.iter().position(|(n, _)| *n == next) {
                            let mut cycle: Vec<String> =
                                path[at..].iter().map(|(n, _)| n.to_string()).collect();
                            cycle.push(next.to_string());
                            return Err(DependencyError::Cycle(cycle));
                        }
                        path.push((next, pending(&edges, next)));
                    }
                    None => {
                        let level = edges[node].iter().map(|d| levels[d] + 1).max().unwrap_or(0);
                        levels.insert(node, level);
                        path.pop();
                    }
                }
            }
        }
        Ok(levels
            .into_iter()
            .map(|(id, level)| (id.to_string(), level))
            .collect())
    }
}

fn pending<'a>(edges: &BTreeMap<&'a str, BTreeSet<&'a str>>, node: &str) -> Vec<&'a str> {
    edges
        .get(node)
        .map(|to| to.iter().rev().copied().collect())
        .unwrap_or_default()
}

/// The steps of a deployment: first the stops, dependents before what they depend on (by
/// `stop_levels`, the graph before the change), then the other actions, dependencies before
/// their dependents (by `levels`, the graph after it). Actions of one level form one step;
/// an app the graph does not know (it has no dependencies) is on level 0.
pub fn order_steps(
    actions: Vec<DeploymentAction>,
    stop_levels: &BTreeMap<String, usize>,
    levels: &BTreeMap<String, usize>,
) -> Vec<Vec<DeploymentAction>> {
    let (stops, others): (Vec<_>, Vec<_>) = actions
        .into_iter()
        .partition(|a| a.action == STOP_APPLICATION);
    let by_level = |actions: Vec<DeploymentAction>, levels: &BTreeMap<String, usize>| {
        let mut grouped: BTreeMap<usize, Vec<DeploymentAction>> = BTreeMap::new();
        for action in actions {
            let level = levels.get(&action.app_id).copied().unwrap_or(0);
            grouped.entry(level).or_default().push(action);
        }
        grouped.into_values().collect::<Vec<_>>()
    };
    let mut steps: Vec<Vec<DeploymentAction>> = by_level(stops, stop_levels);
    steps.reverse();
    steps.extend(by_level(others, levels));
    steps
}

/// Whether one action of a deployment is done: a stopped app has no task left (or exists
/// again), any other app runs exactly its instances, all of its current version and
/// healthy, and none is stopping.
pub fn action_done(
    tables: &WorkloadTables,
    action: &DeploymentAction,
    healthy: &dyn Fn(&Allocation) -> bool,
) -> bool {
    match tables.apps.get(&action.app_id) {
        None => tables.tasks_of(&action.app_id).next().is_none(),
        Some(_) if action.action == STOP_APPLICATION => true,
        Some(app) => {
            let mut live = 0usize;
            for task in tables.tasks_of(&app.id) {
                if !task.desired_running || task.app_version != app.version || !healthy(task) {
                    return false;
                }
                live += 1;
            }
            live == app.instances as usize
        }
    }
}

/// The index of the first step of `steps` not yet done; `steps.len()` when all are.
pub fn current_step(
    tables: &WorkloadTables,
    steps: &[Vec<DeploymentAction>],
    healthy: &dyn Fn(&Allocation) -> bool,
) -> usize {
    steps
        .iter()
        .position(|step| !step.iter().all(|a| action_done(tables, a, healthy)))
        .unwrap_or(steps.len())
}

/// Ids of stored groups at or below `id`, and of apps below it.
pub fn contents(tables: &WorkloadTables, id: &str) -> (Vec<String>, Vec<String>) {
    let groups = tables
        .groups
        .keys()
        .filter(|g| is_under(g, id))
        .cloned()
        .collect();
    let apps = tables
        .apps
        .keys()
        .filter(|a| is_under(a, id))
        .cloned()
        .collect();
    (groups, apps)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn graph(apps: &[(&str, &[&str])], groups: &[(&str, &[&str])]) -> DependencyGraph {
        let list = |items: &[(&str, &[&str])]| {
            items
                .iter()
                .map(|(id, deps)| (id.to_string(), deps.iter().map(|d| d.to_string()).collect()))
                .collect()
        };
        DependencyGraph {
            apps: list(apps),
            groups: list(groups),
        }
    }

    fn start(app: &str) -> DeploymentAction {
        DeploymentAction {
            action: "StartApplication".into(),
            app_id: app.into(),
        }
    }

    fn stop(app: &str) -> DeploymentAction {
        DeploymentAction {
            action: STOP_APPLICATION.into(),
            app_id: app.into(),
        }
    }

    fn step_apps(steps: &[Vec<DeploymentAction>]) -> Vec<Vec<&str>> {
        steps
            .iter()
            .map(|s| s.iter().map(|a| a.app_id.as_str()).collect())
            .collect()
    }

    fn start_steps(graph: &DependencyGraph) -> Vec<Vec<DeploymentAction>> {
        let levels = graph.levels().expect("no cycle");
        let actions = graph.apps.keys().map(|a| start(a)).collect();
        order_steps(actions, &BTreeMap::new(), &levels)
    }

    #[test]
    fn ids_and_their_groups() {
        assert!(is_under("/prod/web", "/prod"));
        assert!(is_under("/prod", "/prod"));
        assert!(!is_under("/production", "/prod"));
        assert!(is_under("/anything", ROOT_GROUP));
        assert_eq!(parent_of("/prod/web"), "/prod");
        assert_eq!(parent_of("/web"), "/");
        assert_eq!(
            ancestors("/a/b/c").collect::<Vec<_>>(),
            vec!["/a/b", "/a", "/"]
        );
        assert_eq!(ancestors("/").count(), 0);
    }

    #[test]
    fn a_chain_starts_one_app_per_step_from_its_root() {
        let g = graph(&[("/c", &["/b"]), ("/b", &["/a"]), ("/a", &[])], &[]);
        assert_eq!(
            step_apps(&start_steps(&g)),
            vec![vec!["/a"], vec!["/b"], vec!["/c"]]
        );
    }

    #[test]
    fn a_diamond_starts_both_middles_together() {
        let g = graph(
            &[
                ("/top", &["/left", "/right"]),
                ("/left", &["/base"]),
                ("/right", &["/base"]),
                ("/base", &[]),
            ],
            &[],
        );
        assert_eq!(
            step_apps(&start_steps(&g)),
            vec![vec!["/base"], vec!["/left", "/right"], vec!["/top"]]
        );
    }

    #[test]
    fn a_longer_path_decides_the_step() {
        // /d depends on /a directly and on /c, which is two steps after /a.
        let g = graph(
            &[
                ("/a", &[]),
                ("/b", &["/a"]),
                ("/c", &["/b"]),
                ("/d", &["/a", "/c"]),
            ],
            &[],
        );
        assert_eq!(
            step_apps(&start_steps(&g)),
            vec![vec!["/a"], vec!["/b"], vec!["/c"], vec!["/d"]]
        );
    }

    #[test]
    fn group_dependencies_apply_to_every_app_below_and_name_every_app_below() {
        // Every app below /front depends on every app below /back.
        let g = graph(
            &[
                ("/back/db", &[]),
                ("/back/cache", &[]),
                ("/front/web", &[]),
                ("/front/api/v1", &[]),
            ],
            &[("/front", &["/back"])],
        );
        assert_eq!(
            step_apps(&start_steps(&g)),
            vec![
                vec!["/back/cache", "/back/db"],
                vec!["/front/api/v1", "/front/web"]
            ]
        );
        // An app may name a group, implicit or stored.
        let g = graph(&[("/web", &["/back"]), ("/back/db", &[])], &[]);
        assert_eq!(
            step_apps(&start_steps(&g)),
            vec![vec!["/back/db"], vec!["/web"]]
        );
    }

    #[test]
    fn a_group_depending_on_a_group_holding_it_is_not_a_self_dependency() {
        let g = graph(&[("/a/x", &[])], &[("/a", &["/a"])]);
        assert_eq!(step_apps(&start_steps(&g)), vec![vec!["/a/x"]]);
    }

    #[test]
    fn cycles_are_refused_and_named() {
        let g = graph(&[("/a", &["/b"]), ("/b", &["/c"]), ("/c", &["/a"])], &[]);
        match g.levels() {
            Err(DependencyError::Cycle(path)) => {
                assert_eq!(path.first(), path.last());
                assert_eq!(path.len(), 4);
            }
            other => panic!("expected a cycle, got {other:?}"),
        }
        // Through groups: /front's apps depend on /back, whose app depends on /front/web.
        let g = graph(
            &[("/front/web", &[]), ("/back/db", &["/front/web"])],
            &[("/front", &["/back"])],
        );
        assert!(matches!(g.levels(), Err(DependencyError::Cycle(_))));
        // Two apps naming each other.
        let g = graph(&[("/a", &["/b"]), ("/b", &["/a"])], &[]);
        assert!(matches!(g.levels(), Err(DependencyError::Cycle(_))));
    }

    #[test]
    fn unknown_dependencies_are_refused_for_what_is_checked() {
        let g = graph(&[("/web", &["/db"]), ("/db", &[])], &[("/g", &["/nope"])]);
        assert_eq!(g.check_known(["/web"]), Ok(()));
        assert_eq!(
            g.check_known(["/g"]),
            Err(DependencyError::Unknown {
                from: "/g".into(),
                dependency: "/nope".into()
            })
        );
        // An empty stored group is a group to depend on.
        let g = graph(&[("/web", &["/empty"])], &[("/empty", &[])]);
        assert_eq!(g.check_known(["/web"]), Ok(()));
        // Unknown ids are left out of the edges.
        let g = graph(&[("/web", &["/gone"])], &[]);
        assert_eq!(step_apps(&start_steps(&g)), vec![vec!["/web"]]);
    }

    #[test]
    fn stops_come_first_and_in_reverse_order() {
        let before = graph(&[("/web", &["/db"]), ("/db", &[]), ("/new", &[])], &[]);
        let stop_levels = before.levels().expect("no cycle");
        let after = graph(&[("/new", &[])], &[]);
        let steps = order_steps(
            vec![stop("/db"), stop("/web"), start("/new")],
            &stop_levels,
            &after.levels().expect("no cycle"),
        );
        assert_eq!(
            step_apps(&steps),
            vec![vec!["/web"], vec!["/db"], vec!["/new"]]
        );
        assert!(steps[0].iter().all(|a| a.action == STOP_APPLICATION));
    }
}
