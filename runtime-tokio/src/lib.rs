//! flightdeck on tokio: placeholder until the adapter issue fills it.
