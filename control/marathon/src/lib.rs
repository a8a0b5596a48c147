//! Padis Marathon source: follows Marathon's event stream and REST API and maps labelled apps to desired state
