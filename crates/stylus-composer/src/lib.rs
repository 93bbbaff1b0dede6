//! stylus-composer
