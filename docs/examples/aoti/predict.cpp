// Answers for one picture from an AOTInductor package exported with --embed-preprocessing, without
// Python and without a line of preprocessing here: the package takes the picture's 8-bit pixels
// as they are ([1, H, W, 3], NHWC) and does the manifest's resize, letterbox or crop and
// normalisation itself; boxes come back in the picture's own pixels.
//
//   autotimm-export resnet50 -f aoti --embed-preprocessing -o out/
//   predict out/resnet50.aoti.pt2 PICTURE.ppm [TOP_K]
//
// The picture is a binary PPM (P6, 8 bit), which any image tool writes (`convert in.jpg out.ppm`,
// PIL's `Image.save("out.ppm")`). A classifier (one output) prints its TOP_K (default 5) classes
// and softmax probabilities, one per line: `label probability`. A detector (boxes, scores, labels,
// num_detections) prints one line per detection: `label score x1 y1 x2 y2`. Build with build.sh
// against the torch wheel's own headers and libraries.
#include <ATen/ATen.h>
#include <torch/csrc/inductor/aoti_package/model_package_loader.h>

#include <algorithm>
#include <cctype>
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

// the picture's pixels as they are: [1, H, W, 3] uint8, what the package takes
at::Tensor read_ppm(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  if (!f) throw std::runtime_error("cannot open " + path);
  std::string magic;
  f >> magic;
  if (magic != "P6") throw std::runtime_error(path + " is not a binary PPM (P6) picture");
  const int width = read_header_int(f), height = read_header_int(f), maxval = read_header_int(f);
  if (width < 8 || height < 8 || width > 8192 || height > 8192 || maxval != 255)
    throw std::runtime_error(path + ": only 8-bit PPM pictures from 8 x 8 to 8192 x 8192 are read");
  f.get();  // the single whitespace after maxval
  auto picture = at::empty({1, height, width, 3}, at::kByte);
  const auto bytes = static_cast<std::streamsize>(picture.numel());
  f.read(reinterpret_cast<char*>(picture.data_ptr<uint8_t>()), bytes);
  if (f.gcount() != bytes) throw std::runtime_error(path + " is truncated");
  return picture;
}

void print_classes(const at::Tensor& logits, int64_t top_k) {
  const at::Tensor probs = logits.to(at::kCPU).to(at::kFloat).softmax(1)[0];
  const int64_t k = std::min<int64_t>(top_k, probs.size(0));
  const auto [values, indices] = probs.topk(k);
  for (int64_t i = 0; i < k; ++i)
    std::cout << indices[i].item<int64_t>() << " " << std::fixed << std::setprecision(6) << values[i].item<float>()
              << "\n";
}

void print_detections(const std::vector<at::Tensor>& out) {
  const at::Tensor boxes = out.at(0).to(at::kCPU).to(at::kFloat)[0], scores = out.at(1).to(at::kCPU).to(at::kFloat)[0];
  const at::Tensor labels = out.at(2).to(at::kCPU).to(at::kLong)[0];
  const int64_t n = out.at(3).to(at::kCPU).to(at::kLong).reshape({-1})[0].item<int64_t>();
  for (int64_t i = 0; i < n; ++i) {
    if (labels[i].item<int64_t>() < 0) continue;  // padding
    std::cout << labels[i].item<int64_t>() << " " << std::fixed << std::setprecision(6) << scores[i].item<float>();
    for (int64_t j = 0; j < 4; ++j) std::cout << " " << std::setprecision(2) << boxes[i][j].item<float>();
    std::cout << "\n";
  }
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 3 && argc != 4) {
    std::cerr << "usage: " << argv[0] << " PACKAGE.aoti.pt2 PICTURE.ppm [TOP_K]\n";
    return 2;
  }
  try {
    at::Tensor picture = read_ppm(argv[2]);
    torch::inductor::AOTIModelPackageLoader loader(argv[1]);
    const auto metadata = loader.get_metadata();  // a package compiled for CUDA takes CUDA inputs
    const auto device = metadata.find("AOTI_DEVICE_KEY");
    if (device != metadata.end() && device->second != "cpu") picture = picture.to(at::Device(device->second));
    const std::vector<at::Tensor> outputs = loader.run({picture});
    if (outputs.size() >= 4) {
      print_detections(outputs);
    } else {
      print_classes(outputs.at(0), argc == 4 ? std::stol(argv[3]) : 5);
    }
  } catch (const std::exception& e) {
    std::string what = e.what();
    std::cerr << "predict: " << what.substr(0, what.find('\n')) << "\n";
    return 1;
  }
  return 0;
}
