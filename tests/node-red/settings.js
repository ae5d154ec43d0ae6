// Node-RED settings for tests/test_node_red.py: headless, offline, nothing kept between runs.
// The flow itself comes from docs/telemetry.md; this file only says how Node-RED runs it.
module.exports = {
    credentialSecret: false,         // the flow has no credentials: no key is made or kept
    httpAdminRoot: false,            // no editor, no admin API ...
    httpNodeRoot: false,             // ... and no HTTP nodes: Node-RED opens no port at all
    disableEditor: true,
    diagnostics: { enabled: false, ui: false },
    runtimeState: { enabled: false, ui: false },
    telemetry: { enabled: false, updateNotification: false },  // never asks the network
    externalModules: {
        autoInstall: false,
        palette: { allowInstall: false },
        modules: { allowInstall: false },
    },
    editorTheme: { projects: { enabled: false } },
    logging: { console: { level: "info", metrics: false, audit: false } },
    functionExternalModules: false,
};
