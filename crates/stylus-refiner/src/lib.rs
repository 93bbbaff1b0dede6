//! stylus-refiner

pub mod bert;
