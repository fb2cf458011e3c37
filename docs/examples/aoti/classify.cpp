// Classify one picture with an AOTInductor package, without Python:
//
//   classify PACKAGE.aoti.pt2 PICTURE.ppm HEIGHT WIDTH CROP_PCT INTERPOLATION MEAN_R MEAN_G MEAN_B STD_R STD_G STD_B [TOP_K]
//
// The values are the manifest's `preprocessing` (PACKAGE.aoti.pt2.json): input_size, crop_pct,
// interpolation (bilinear or bicubic), mean and std. The picture is a binary PPM (P6, 8 bit), which
// any image tool writes (`convert in.jpg out.ppm`, PIL's `Image.save("out.ppm")`). The preprocessing
// is the project's (exporter/inputs/preprocess.py, timm's eval transform): resize with antialiasing
// so the shorter side covers max(HEIGHT, WIDTH) / CROP_PCT, centre-crop, round to 8 bit, scale to
// [0, 1], normalize. Prints the TOP_K (default 5) class indices and softmax probabilities of the
// first output, one per line. Build with build.sh against the torch wheel's own headers and libraries.
#include <ATen/ATen.h>
#include <torch/csrc/inductor/aoti_package/model_package_loader.h>

#include <algorithm>
#include <cctype>
#include <cmath>
#include <cstdint>
#include <fstream>
#include <iomanip>
#include <iostream>
#include <stdexcept>
#include <string>
#include <vector>

namespace {

int read_header_int(std::istream& f) {
  for (int c = f.peek(); c != EOF; c = f.peek()) {  // whitespace and # comments between fields
    if (std::isspace(c)) {
      f.get();
    } else if (c == '#') {
      std::string comment;
      std::getline(f, comment);
    } else {
      break;
    }
  }
  int value = -1;
  if (!(f >> value)) throw std::runtime_error("not a binary PPM (P6) picture: bad header");
  return value;
}

// HxWx3 uint8 -> 1x3xHxW float in 0..255
at::Tensor read_ppm(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  if (!f) throw std::runtime_error("cannot open " + path);
  std::string magic;
  f >> magic;
  if (magic != "P6") throw std::runtime_error(path + " is not a binary PPM (P6) picture");
  const int width = read_header_int(f), height = read_header_int(f), maxval = read_header_int(f);
  if (width <= 0 || height <= 0 || width > 32768 || height > 32768 || maxval != 255)
    throw std::runtime_error(path + ": only 8-bit PPM pictures up to 32768 x 32768 are read");
  f.get();  // the single whitespace after maxval
  std::vector<uint8_t> pixels(static_cast<size_t>(width) * height * 3);
  f.read(reinterpret_cast<char*>(pixels.data()), static_cast<std::streamsize>(pixels.size()));
  if (static_cast<size_t>(f.gcount()) != pixels.size()) throw std::runtime_error(path + " is truncated");
  return at::from_blob(pixels.data(), {height, width, 3}, at::kByte)
      .permute({2, 0, 1}).unsqueeze(0).to(at::kFloat).contiguous();
}

// exporter/inputs/preprocess.py, step by step (PIL's antialiased resize there, ATen's here)
at::Tensor preprocess(at::Tensor img, int64_t height, int64_t width, double crop_pct, const std::string& interpolation,
                      const std::vector<float>& mean, const std::vector<float>& std) {
  const int64_t h = img.size(2), w = img.size(3);
  const double ratio = static_cast<double>(std::max(height, width)) / crop_pct / static_cast<double>(std::min(h, w));
  // Python's round(): half to even, as std::nearbyint in the default rounding mode
  const int64_t rw = std::max<int64_t>(width, static_cast<int64_t>(std::nearbyint(w * ratio)));
  const int64_t rh = std::max<int64_t>(height, static_cast<int64_t>(std::nearbyint(h * ratio)));
  if (interpolation == "bicubic") {
    img = at::_upsample_bicubic2d_aa(img, {rh, rw}, /*align_corners=*/false);
  } else if (interpolation == "bilinear") {
    img = at::_upsample_bilinear2d_aa(img, {rh, rw}, /*align_corners=*/false);
  } else {
    throw std::runtime_error("INTERPOLATION takes bilinear or bicubic, got " + interpolation);
  }
  const int64_t left = (rw - width) / 2, top = (rh - height) / 2;
  img = img.slice(2, top, top + height).slice(3, left, left + width);
  const auto m = at::tensor(mean).view({1, 3, 1, 1}), s = at::tensor(std).view({1, 3, 1, 1});
  return ((img.round().clamp(0, 255) / 255.0 - m) / s).contiguous();
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 13 && argc != 14) {
    std::cerr << "usage: " << argv[0] << " PACKAGE.aoti.pt2 PICTURE.ppm HEIGHT WIDTH CROP_PCT INTERPOLATION "
              << "MEAN_R MEAN_G MEAN_B STD_R STD_G STD_B [TOP_K]\n";
    return 2;
  }
  try {
    const std::vector<float> mean{std::stof(argv[7]), std::stof(argv[8]), std::stof(argv[9])};
    const std::vector<float> std{std::stof(argv[10]), std::stof(argv[11]), std::stof(argv[12])};
    at::Tensor input = preprocess(read_ppm(argv[2]), std::stol(argv[3]), std::stol(argv[4]), std::stod(argv[5]),
                                  argv[6], mean, std);
    torch::inductor::AOTIModelPackageLoader loader(argv[1]);
    const auto metadata = loader.get_metadata();  // a package compiled for CUDA takes CUDA inputs
    const auto device = metadata.find("AOTI_DEVICE_KEY");
    if (device != metadata.end() && device->second != "cpu") input = input.to(at::Device(device->second));
    const std::vector<at::Tensor> outputs = loader.run({input});
    const at::Tensor probs = outputs.at(0).to(at::kCPU).to(at::kFloat).softmax(1)[0];
    const int64_t k = std::min<int64_t>(argc == 14 ? std::stol(argv[13]) : 5, probs.size(0));
    const auto [values, indices] = probs.topk(k);
    for (int64_t i = 0; i < k; ++i) {
      std::cout << indices[i].item<int64_t>() << " " << std::fixed << std::setprecision(6)
                << values[i].item<float>() << "\n";
    }
  } catch (const std::exception& e) {
    std::string what = e.what();
    std::cerr << "classify: " << what.substr(0, what.find('\n')) << "\n";
    return 1;
  }
  return 0;
}
