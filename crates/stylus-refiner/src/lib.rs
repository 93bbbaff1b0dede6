//! stylus-refiner
