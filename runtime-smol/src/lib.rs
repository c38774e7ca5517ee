//! flightdeck on smol: placeholder until the adapter issue fills it.
